"""Where checkpoints live: a local directory or an S3 prefix.

A store knows the layout (``stoker.common.layout``): step folders, the manifest
and the commit marker. It hands out DCP storage writers/readers for one step
folder and does the small operations around them (list, marker, delete).
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter, StorageReader, StorageWriter

from stoker.common import env, layout

from .retry import call_with_retry


class Store(Protocol):
    uri: str

    def list_steps(self) -> list[int]: ...
    def is_committed(self, step: int) -> bool: ...
    def list_files(self, step: int) -> dict[str, int]: ...
    def write_bytes(self, step: int, name: str, data: bytes) -> None: ...
    def read_bytes(self, step: int, name: str) -> bytes: ...
    def delete_step(self, step: int) -> None: ...
    def read_root(self, name: str) -> bytes | None: ...   # an object at the root (None: absent)
    def write_root(self, name: str, data: bytes) -> None: ...
    def writer(self, step: int) -> StorageWriter: ...
    def reader(self, step: int) -> StorageReader: ...


def open_store(uri: str, *, retry_timeout_s: float = 120.0, backend: str | None = None) -> Store:
    """``s3://bucket/prefix`` -> S3; ``/path``, ``./path`` or ``file:///path`` -> local."""
    if not uri:
        raise ValueError(f"checkpoint URI is empty: set {env.CHECKPOINT_URI} to s3://BUCKET/PREFIX or a local path")
    if uri.startswith("s3://"):
        from .s3 import S3Store  # boto3 only when used

        return S3Store(uri, retry_timeout_s=retry_timeout_s, backend=backend or "auto")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme:
        raise ValueError(
            f"unsupported checkpoint URI scheme {parsed.scheme!r} in {uri!r}: "
            "use s3://BUCKET/PREFIX, file:///PATH or a plain path"
        )
    return LocalStore(uri)


def committed_steps(store: Store) -> list[int]:
    return [s for s in store.list_steps() if store.is_committed(s)]


def newest_committed(store: Store) -> int | None:
    for step in sorted(store.list_steps(), reverse=True):
        if store.is_committed(step):
            return step
    return None


def manifest_bytes(**fields) -> bytes:
    return json.dumps(fields, sort_keys=True, indent=1).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """A directory on a local or network file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.uri = str(self.root)

    def _dir(self, step: int) -> Path:
        return self.root / layout.step_dir(step)

    def list_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = (layout.parse_step_dir(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(s for s in steps if s is not None)

    def is_committed(self, step: int) -> bool:
        return (self._dir(step) / layout.COMMIT_MARKER).is_file()

    def list_files(self, step: int) -> dict[str, int]:
        d = self._dir(step)
        if not d.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()}

    def write_bytes(self, step: int, name: str, data: bytes) -> None:
        d = self._dir(step)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / name)
        _fsync_dir(d)

    def read_bytes(self, step: int, name: str) -> bytes:
        return (self._dir(step) / name).read_bytes()

    def read_root(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write_root(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)

    def delete_step(self, step: int) -> None:
        d = self._dir(step)
        marker = d / layout.COMMIT_MARKER
        if marker.exists():  # un-commit first: readers never see a half-deleted checkpoint
            marker.unlink()
            _fsync_dir(d)
        shutil.rmtree(d, ignore_errors=True)

    def writer(self, step: int) -> StorageWriter:
        self._dir(step).mkdir(parents=True, exist_ok=True)
        return FileSystemWriter(self._dir(step), sync_files=True, thread_count=1)

    def reader(self, step: int) -> StorageReader:
        return FileSystemReader(self._dir(step))


def read_json(store: Store, step: int, name: str) -> dict:
    return json.load(io.BytesIO(store.read_bytes(step, name)))


__all__ = [
    "LocalStore", "Store", "call_with_retry", "committed_steps", "manifest_bytes",
    "newest_committed", "open_store", "read_json",
]
