"""Where a dataset lives: a local directory or an S3 prefix, with the few operations the
writer and the reader need. S3 goes through the checkpoints' clients and bounded retries
(``stoker.worker.checkpoint.s3client``, ``retry.call_with_retry``), so the endpoint and
credentials come from the same AWS variables. The choice is the checkpoints' too: reads go
through the CRT client (s3torchconnector's, in C: it holds no GIL while bytes move) where it is
installed, through boto3 otherwise (``transport``); writes go through boto3."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import BinaryIO

from stoker.common import layout
from stoker.worker.checkpoint.retry import call_with_retry, crt_missing
from stoker.worker.checkpoint.s3client import TRANSFER, CrtGets, crt_available, get_or_none, make_client

RETRY_TIMEOUT_S = 120.0
CHUNK = 1 << 20
TRANSPORTS = ("auto", "crt", "boto3")


def resolve_transport(transport: str) -> str:
    """``auto``: ``crt`` where s3torchconnector's client is installed, else ``boto3``."""
    if transport not in TRANSPORTS:
        raise ValueError(f"S3 transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport == "auto":
        return "crt" if crt_available() else "boto3"
    return transport


def open_prefix(uri: str, *, retry_timeout_s: float = RETRY_TIMEOUT_S,
                transport: str = "auto") -> "LocalPrefix | S3Prefix":
    """``s3://bucket/prefix`` or a local directory path."""
    if uri.startswith("s3://"):
        return S3Prefix(uri, retry_timeout_s=retry_timeout_s, transport=transport)
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
    def __init__(self, uri: str, *, retry_timeout_s: float = RETRY_TIMEOUT_S, client=None, transport: str = "auto"):
        self.bucket, self.prefix = layout.split_s3_uri(uri)
        self.uri = uri.rstrip("/")
        self.retry_timeout_s = retry_timeout_s
        self.transport = resolve_transport(transport)
        self._crt = CrtGets() if self.transport == "crt" else None
        # over boto3 the client is made now: fetchd says it is ready after this (a client made by its
        # first downloads, in 10 threads at once, held the first steps ~0.7 s)
        self._boto3 = client or (make_client() if self._crt is None else None)
        self._boto3_lock = threading.Lock()

    @property
    def client(self):
        """boto3's client; over the CRT client made on first use (a reader never needs it)."""
        with self._boto3_lock:
            if self._boto3 is None:
                self._boto3 = make_client()
            return self._boto3

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _retry(self, fn, what: str):
        return call_with_retry(fn, what=what, timeout_s=self.retry_timeout_s)

    def _chunks(self, key: str, start: int | None = None, end: int | None = None):
        """The object's bytes (``start``..``end``, end excluded) in chunks, through the transport."""
        if self._crt is not None:
            return self._crt.get(self.bucket, key, start, end)
        rng = {} if start is None else {"Range": f"bytes={start}-{end - 1}"}
        return self.client.get_object(Bucket=self.bucket, Key=key, **rng)["Body"].iter_chunks(CHUNK)

    def read_bytes(self, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        key = self._key(name)

        def read() -> bytes | None:
            if self._crt is None:
                return get_or_none(self.client, self.bucket, key)
            try:
                return b"".join(self._chunks(key))
            except Exception as exc:  # noqa: BLE001 - the CRT client's errors carry no type, only text
                if crt_missing(exc):
                    return None
                raise

        return self._retry(read, f"read s3://{self.bucket}/{key}")

    def download(self, name: str, out: BinaryIO) -> None:
        """Stream the object into ``out`` (rewound and truncated before each try)."""
        key = self._key(name)

        def get() -> None:
            out.seek(0)
            out.truncate()
            for chunk in self._chunks(key):
                out.write(chunk)

        self._retry(get, f"download s3://{self.bucket}/{key}")

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``, one ranged GET (retried like every call here);
        fewer if the object is shorter: the caller checks."""
        key = self._key(name)
        return self._retry(lambda: b"".join(self._chunks(key, start, start + length)),
                           f"read bytes {start}-{start + length - 1} of s3://{self.bucket}/{key}")

    def upload(self, path: Path, name: str) -> None:
        key = self._key(name)
        self._retry(lambda: self.client.upload_file(str(path), self.bucket, key, Config=TRANSFER),
                    f"upload s3://{self.bucket}/{key}")

    def put_bytes(self, name: str, data: bytes) -> None:
        key = self._key(name)
        self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data),
                    f"put s3://{self.bucket}/{key}")
