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
from pathlib import Path

from .index import Shard
from .storage import LocalPrefix, S3Prefix

log = logging.getLogger("stoker.worker.shards")

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "stoker" / "datasets"


class ShardCorrupt(RuntimeError):
    """A shard's bytes are not the ones its index describes."""


class _Sink:
    """Where a download's bytes go: a file written through its descriptor and a running sha256,
    both begun again by ``seek(0)`` when a try starts over (``S3Prefix.download`` rewinds and
    truncates its target before each try).
    The bytes are hashed as they arrive, not read back, and each chunk costs two calls that
    release the GIL: the trainer's threads run the downloads, and every Python-level step of
    theirs is time the training loop waits for the GIL (a shard's fetch lost the demo loop ~1.2 ms
    through a buffered file, ``mkstemp`` and a re-read for the hash; ~0.8 ms this way)."""

    def __init__(self, fd: int):
        self.fd, self.size, self.hash = fd, 0, hashlib.sha256()

    def seek(self, pos: int) -> None:
        if self.size:  # a retry begins again: file and hash emptied here (a first try costs no call)
            os.lseek(self.fd, pos, os.SEEK_SET)
            os.ftruncate(self.fd, pos)
            self.size, self.hash = 0, hashlib.sha256()

    def truncate(self) -> None:
        """Nothing left to do: ``seek`` emptied the file."""

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]
        self.hash.update(chunk)
        self.size += len(chunk)


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
        tmp = self.root / f".{shard.sha256[:16]}.{os.urandom(6).hex()}.part"  # private: ranks may share the cache
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            sink = _Sink(fd)
            try:
                source.download(shard.name, sink)
            finally:
                os.close(fd)
            _verify(sink, shard, f"{source.uri}/{shard.name}")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.info("shards.fetched name=%s bytes=%d", shard.name, shard.bytes)
        return final


def _verify(sink: _Sink, shard: Shard, where: str) -> None:
    if sink.size != shard.bytes:
        raise ShardCorrupt(f"{where}: {sink.size} bytes, the index says {shard.bytes}: the shard changed after its "
                           f"index was written; write the dataset again to a new prefix")
    digest = sink.hash.hexdigest()
    if digest != shard.sha256:
        raise ShardCorrupt(f"{where}: sha256 {digest[:16]}... is not the index's {shard.sha256[:16]}...: the shard "
                           f"changed after its index was written; write the dataset again to a new prefix")
