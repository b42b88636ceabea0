"""The local shard cache: content-addressed files, verified before they are used.

A shard is stored as ``<cache_dir>/<sha256>.bin``. It is downloaded to a private temporary
file in the same directory, checked against the index (size and sha256), and only then
renamed into place (atomic), so a file under its final name is always complete and
verified; ranks on one node may share the directory and even fetch the same shard at once.
A file of the wrong size under a final name (a truncated disk, a hand edit) is removed and
fetched again; a download whose bytes do not match the index is an error, not retried.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from .index import Shard
from .storage import LocalPrefix, S3Prefix

log = logging.getLogger("stoker.worker.shards")

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "stoker" / "datasets"
HASH_CHUNK = 4 << 20


class ShardCorrupt(RuntimeError):
    """A shard's bytes are not the ones its index describes."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ShardCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else DEFAULT_CACHE_DIR
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, shard: Shard) -> Path:
        return self.root / f"{shard.sha256}.bin"

    def is_empty(self) -> bool:
        """No shard of any dataset is cached here (a new pod's cache)."""
        return not any(self.root.glob("*.bin"))

    def has(self, shard: Shard) -> bool:
        """True when a complete copy is cached; a wrong-sized copy is removed."""
        path = self.path(shard)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        if size == shard.bytes:
            return True
        log.warning("shards.cache_bad_size path=%s size=%d expected=%d: fetching again", path, size, shard.bytes)
        path.unlink(missing_ok=True)
        return False

    def fetch(self, source: LocalPrefix | S3Prefix, shard: Shard) -> Path:
        """The cached copy's path, downloading and verifying it first if needed."""
        final = self.path(shard)
        if self.has(shard):
            return final
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{shard.sha256[:16]}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as out:
                source.download(shard.name, out)
            _verify(tmp, shard, f"{source.uri}/{shard.name}")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("shards.fetched name=%s bytes=%d", shard.name, shard.bytes)
        return final


def _verify(path: Path, shard: Shard, where: str) -> None:
    size = path.stat().st_size
    if size != shard.bytes:
        raise ShardCorrupt(f"{where}: {size} bytes, the index says {shard.bytes}: the shard changed after its "
                           f"index was written; write the dataset again to a new prefix")
    digest = file_sha256(path)
    if digest != shard.sha256:
        raise ShardCorrupt(f"{where}: sha256 {digest[:16]}... is not the index's {shard.sha256[:16]}...: the shard "
                           f"changed after its index was written; write the dataset again to a new prefix")
