"""Where a dataset lives: a local directory or an S3 prefix, with the few operations the
writer and the reader need. S3 goes through the checkpoints' client and bounded retries
(``stoker.worker.checkpoint.s3client.make_client``, ``retry.call_with_retry``), so the endpoint and
credentials come from the same AWS variables."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from stoker.common import layout
from stoker.worker.checkpoint.retry import call_with_retry
from stoker.worker.checkpoint.s3client import TRANSFER, get_or_none, make_client

RETRY_TIMEOUT_S = 120.0
CHUNK = 1 << 20


def open_prefix(uri: str, *, retry_timeout_s: float = RETRY_TIMEOUT_S) -> "LocalPrefix | S3Prefix":
    """``s3://bucket/prefix`` or a local directory path."""
    if uri.startswith("s3://"):
        return S3Prefix(uri, retry_timeout_s=retry_timeout_s)
    if "://" in uri:
        raise ValueError(f"unsupported dataset location {uri!r}: use s3://BUCKET/PREFIX or a local directory")
    return LocalPrefix(uri)


class LocalPrefix:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def read_bytes(self, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def download(self, name: str, out: BinaryIO) -> None:
        with open(self.root / name, "rb") as f:
            shutil.copyfileobj(f, out, CHUNK)

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer if the file is shorter: the caller checks)."""
        with open(self.root / name, "rb") as f:
            f.seek(start)
            return f.read(length)

    def upload(self, path: Path, name: str) -> None:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def put_bytes(self, name: str, data: bytes) -> None:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)


class S3Prefix:
    def __init__(self, uri: str, *, retry_timeout_s: float = RETRY_TIMEOUT_S, client=None):
        self.bucket, self.prefix = layout.split_s3_uri(uri)
        self.uri = uri.rstrip("/")
        self.client = client or make_client()
        self.retry_timeout_s = retry_timeout_s

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_bytes(self, name: str) -> bytes | None:
        key = self._key(name)
        return call_with_retry(lambda: get_or_none(self.client, self.bucket, key),
                               what=f"read s3://{self.bucket}/{key}", timeout_s=self.retry_timeout_s)

    def download(self, name: str, out: BinaryIO) -> None:
        """Stream the object into ``out`` (rewound and truncated before each try)."""
        key = self._key(name)

        def get() -> None:
            out.seek(0)
            out.truncate()
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(CHUNK):
                out.write(chunk)

        call_with_retry(get, what=f"download s3://{self.bucket}/{key}", timeout_s=self.retry_timeout_s)

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``, one ranged GET (retried like every call here);
        fewer if the object is shorter: the caller checks."""
        key = self._key(name)
        rng = f"bytes={start}-{start + length - 1}"
        return call_with_retry(lambda: self.client.get_object(Bucket=self.bucket, Key=key, Range=rng)["Body"].read(),
                               what=f"read {rng} of s3://{self.bucket}/{key}", timeout_s=self.retry_timeout_s)

    def upload(self, path: Path, name: str) -> None:
        key = self._key(name)
        call_with_retry(lambda: self.client.upload_file(str(path), self.bucket, key, Config=TRANSFER),
                        what=f"upload s3://{self.bucket}/{key}", timeout_s=self.retry_timeout_s)

    def put_bytes(self, name: str, data: bytes) -> None:
        key = self._key(name)
        call_with_retry(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data),
                        what=f"put s3://{self.bucket}/{key}", timeout_s=self.retry_timeout_s)
