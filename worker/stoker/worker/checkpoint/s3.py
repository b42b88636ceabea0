"""S3 checkpoint storage (see :class:`S3Store` for the shard backends).

The default moves shards with s3torchconnector's DCP writer/reader (AWS CRT);
the fallback is our own DCP file system over boto3: each shard file is buffered
while DCP serializes into it and uploaded on close with boto3's managed
transfer (parallel multipart), reads fetch a whole shard with parallel ranged
GETs. Our calls are retried with backoff for a bounded time
(``retry_timeout_s``); after that the save fails and no commit marker is written.

Endpoint and credentials come from the standard AWS variables
(``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), see ``stoker.common.env``.
"""
from __future__ import annotations

import io
import logging
import os
from contextlib import contextmanager
from typing import Any, Generator

from boto3.s3.transfer import TransferConfig
from torch.distributed.checkpoint import FileSystemReader, StorageReader, StorageWriter
from torch.distributed.checkpoint.filesystem import FileSystemBase, _FileSystemWriter

from stoker.common import env, layout

from .retry import call_with_retry
from .s3client import TRANSFER, MiB, get_or_none, make_client  # noqa: F401  (re-exported: the client needs no torch)

log = logging.getLogger("stoker.worker.checkpoint")

def _split(path: str | os.PathLike) -> tuple[str, str]:
    return layout.split_s3_uri(str(path))


class _UploadOnClose(io.BytesIO):
    """Collects one object in memory; ``close()`` uploads it (DCP closes the
    stream itself once every item is serialized)."""

    def __init__(self, fs: "Boto3FileSystem", path: str):
        super().__init__()
        self._fs, self._path, self._abort, self._uploading = fs, path, False, False

    def close(self) -> None:
        if self._uploading:
            return  # the transfer manager closes what it read from; we close after
        if not self.closed and not self._abort:
            self._uploading = True
            try:
                self._fs._upload(self._path, self)  # straight from this buffer, no copy
            finally:
                self._uploading = False
        super().close()


def s3torchconnector_available() -> bool:
    try:
        import s3torchconnector.dcp  # noqa: F401  (needs the [dcp] extra: tenacity)
    except ImportError:
        return False
    return True


# s3torchconnector's S3Client lives in a private module (s3torchconnector._s3client). It is
# used here only, the worker extra pins s3torchconnector to the minor version it was checked
# with (pyproject.toml), and tests/worker_ckpt/test_s3_private_api.py checks the calls below.
S3TORCHCONNECTOR_CHECKED = "1.5"


def crt_client(max_attempts: int | None = None):
    """s3torchconnector's AWS CRT client (C, multipart, many connections)."""
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client

    config = S3ClientConfig(force_path_style=True, **({"max_attempts": max_attempts} if max_attempts else {}))
    return S3Client(_region(), endpoint=os.environ.get(env.S3_ENDPOINT) or None, s3client_config=config)


def make_crt_client():
    """The CRT client for the shard bytes; its own retries are kept short, ours decide."""
    return crt_client(max_attempts=2)


class Boto3FileSystem(FileSystemBase):
    """DCP file system over S3. Small operations use boto3; shard bytes go
    through ``transport``: ``"crt"`` (s3torchconnector's CRT client, the
    benchmark winner) or ``"boto3"`` (boto3's managed transfer)."""

    def __init__(self, client=None, *, retry_timeout_s: float = 120.0, transfer: TransferConfig = TRANSFER,
                 transport: str = "boto3"):
        if transport not in ("boto3", "crt"):
            raise ValueError(f"transport must be 'boto3' or 'crt', got {transport!r}")
        self.client = client or make_client()
        self.retry_timeout_s = retry_timeout_s
        self.transfer = transfer
        self.transport = transport
        self._crt = make_crt_client() if transport == "crt" else None

    def _upload(self, path: str, buf: io.BytesIO) -> None:
        bucket, key = _split(path)

        def put():
            if self._crt is not None:
                with buf.getbuffer() as view:
                    writer = self._crt.put_object(bucket, key)
                    writer.write(view)
                    writer.close()
                return
            buf.seek(0)
            self.client.upload_fileobj(buf, bucket, key, Config=self.transfer)

        call_with_retry(put, what=f"upload s3://{bucket}/{key}", timeout_s=self.retry_timeout_s)

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Generator[io.IOBase, None, None]:
        path = str(path)
        if mode == "wb":
            stream = _UploadOnClose(self, path)
            try:
                yield stream
            except BaseException:
                stream._abort = True
                raise
            finally:
                stream.close()
        elif mode == "rb":
            bucket, key = _split(path)

            def get() -> io.BytesIO:
                if self._crt is not None:
                    return io.BytesIO(self._crt.get_object(bucket, key).read())
                buf = io.BytesIO()
                self.client.download_fileobj(bucket, key, buf, Config=self.transfer)
                buf.seek(0)
                return buf

            buf = call_with_retry(get, what=f"download s3://{bucket}/{key}", timeout_s=self.retry_timeout_s)
            try:
                yield buf
            finally:
                buf.close()
        else:
            raise ValueError(f"unsupported stream mode {mode!r} (expected 'rb' or 'wb')")

    def concat_path(self, path: str | os.PathLike, suffix: str) -> str:
        return f"{str(path).rstrip('/')}/{suffix}"

    def init_path(self, path: str | os.PathLike) -> str:
        _split(path)  # validates
        return str(path).rstrip("/")

    def rename(self, path: str | os.PathLike, new_path: str | os.PathLike) -> None:
        (b, k), (nb, nk) = _split(path), _split(new_path)

        def mv():
            self.client.copy({"Bucket": b, "Key": k}, nb, nk, Config=self.transfer)
            self.client.delete_object(Bucket=b, Key=k)

        call_with_retry(mv, what=f"rename s3://{b}/{k}", timeout_s=self.retry_timeout_s)

    def mkdir(self, path: str | os.PathLike) -> None:
        pass  # S3 has no folders

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return str(checkpoint_id).startswith("s3://")

    def exists(self, path: str | os.PathLike) -> bool:
        bucket, key = _split(path)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=bucket, Key=key)
                return True
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return call_with_retry(head, what=f"head s3://{bucket}/{key}", timeout_s=self.retry_timeout_s)

    def rm_file(self, path: str | os.PathLike) -> None:
        bucket, key = _split(path)
        call_with_retry(lambda: self.client.delete_object(Bucket=bucket, Key=key),
                        what=f"delete s3://{bucket}/{key}", timeout_s=self.retry_timeout_s)


class Boto3StorageWriter(_FileSystemWriter):
    """DCP StorageWriter for ``s3://bucket/prefix/step-N``; ``thread_count``
    shard files per rank are serialized and uploaded concurrently."""

    def __init__(self, path: str, fs: Boto3FileSystem, thread_count: int = 4, **kwargs: Any):
        super().__init__(path=path, sync_files=False, thread_count=thread_count, **kwargs)
        self.fs = fs
        self.path = fs.init_path(path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return Boto3FileSystem.validate_checkpoint_id(checkpoint_id)


class Boto3StorageReader(FileSystemReader):
    def __init__(self, path: str, fs: Boto3FileSystem):
        super().__init__(path)
        self.fs = fs  # type: ignore[assignment]
        self.path = fs.init_path(path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return Boto3FileSystem.validate_checkpoint_id(checkpoint_id)


class S3Store:
    """Checkpoints under ``s3://bucket/prefix``.

    ``backend`` picks the DCP writer/reader for the shards (listing, manifest
    and commit marker always go through boto3 with bounded retries):

    - ``auto`` (default): ``s3torchconnector`` when installed, else ``boto3``;
    - ``s3torchconnector``: its DCP writer/reader on the AWS CRT client, streaming
      while DCP serializes and reading only the byte ranges needed; the fastest
      in ``bench/bench_checkpoint.py``. Failed requests are retried by the CRT
      client (bounded attempts with backoff), then the save fails cleanly;
    - ``boto3``: our DCP file system, each shard buffered and uploaded with
      boto3's managed transfer under ``retry_timeout_s`` of retries;
    - ``crt``: the same file system with the CRT client moving the bytes;
    - ``fsspec``: DCP's FsspecWriter over s3fs (benchmark candidate).
    """

    BACKENDS = ("auto", "s3torchconnector", "boto3", "crt", "fsspec")

    def __init__(self, uri: str, *, retry_timeout_s: float = 120.0, backend: str = "auto", client=None):
        self.bucket, self.prefix = layout.split_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.retry_timeout_s = retry_timeout_s
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown S3 backend {backend!r} (expected one of {', '.join(self.BACKENDS)})")
        if backend == "auto":
            backend = "s3torchconnector" if s3torchconnector_available() else "boto3"
        self.backend = backend
        self.fs = Boto3FileSystem(client, retry_timeout_s=retry_timeout_s,
                                  transport="crt" if backend == "crt" else "boto3")
        self.client = self.fs.client

    def _crt_client(self):
        """One CRT client per store (it owns connection pools and threads)."""
        if getattr(self, "_crt", None) is None:
            self._crt = crt_client()
        return self._crt

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _retry(self, fn, what: str):
        return call_with_retry(fn, what=what, timeout_s=self.retry_timeout_s)

    def _list(self, prefix: str, delimiter: str | None = None) -> tuple[dict[str, int], list[str]]:
        def run():
            files: dict[str, int] = {}
            dirs: list[str] = []
            kwargs = {"Bucket": self.bucket, "Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", []):
                    files[obj["Key"]] = obj["Size"]
                dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            return files, dirs

        return self._retry(run, f"list s3://{self.bucket}/{prefix}")

    def list_steps(self) -> list[int]:
        base = self._key("") + "/" if self.prefix else ""
        _, dirs = self._list(base, "/")
        steps = (layout.parse_step_dir(d[len(base):]) for d in dirs)
        return sorted(s for s in steps if s is not None)

    def is_committed(self, step: int) -> bool:
        return self.fs.exists(f"s3://{self.bucket}/{self._key(layout.step_dir(step), layout.COMMIT_MARKER)}")

    def list_files(self, step: int) -> dict[str, int]:
        base = self._key(layout.step_dir(step)) + "/"
        files, _ = self._list(base)
        return {k[len(base):]: size for k, size in files.items()}

    def write_bytes(self, step: int, name: str, data: bytes) -> None:
        key = self._key(layout.step_dir(step), name)
        self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data), f"put {key}")

    def read_bytes(self, step: int, name: str) -> bytes:
        key = self._key(layout.step_dir(step), name)
        return self._retry(lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(), f"get {key}")

    def read_root(self, name: str) -> bytes | None:
        key = self._key(name)
        return self._retry(lambda: get_or_none(self.client, self.bucket, key), f"get {key}")

    def write_root(self, name: str, data: bytes) -> None:
        key = self._key(name)
        self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data), f"put {key}")

    def delete_step(self, step: int) -> None:
        base = self._key(layout.step_dir(step)) + "/"
        marker = base + layout.COMMIT_MARKER
        # un-commit first: readers never see a half-deleted checkpoint
        self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=marker), f"delete {marker}")
        keys = [k for k in self._list(base)[0] if k != marker]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self._retry(lambda: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}),
                        f"delete {base}")

    def _step_uri(self, step: int) -> str:
        return f"s3://{self.bucket}/{self._key(layout.step_dir(step))}"

    def writer(self, step: int) -> StorageWriter:
        if self.backend == "fsspec":
            from torch.distributed.checkpoint import FsspecWriter

            return FsspecWriter(self._step_uri(step), sync_files=False, thread_count=4, **_fsspec_options())
        if self.backend == "s3torchconnector":
            from s3torchconnector.dcp import S3StorageWriter

            w = S3StorageWriter(_region(), self._step_uri(step), thread_count=4)
            w.fs = _crt_fs(self._crt_client())
            return w
        return Boto3StorageWriter(self._step_uri(step), self.fs)

    def reader(self, step: int) -> StorageReader:
        if self.backend == "fsspec":
            from torch.distributed.checkpoint import FsspecReader

            return FsspecReader(self._step_uri(step), **_fsspec_options())
        if self.backend == "s3torchconnector":
            from s3torchconnector.dcp import S3StorageReader

            r = S3StorageReader(_region(), self._step_uri(step))
            r.fs = _crt_fs(self._crt_client(), r._reader_constructor)
            return r
        return Boto3StorageReader(self._step_uri(step), self.fs)


def _region() -> str:
    return os.environ.get(env.S3_REGION) or "us-east-1"


def _fsspec_options() -> dict:
    endpoint = os.environ.get(env.S3_ENDPOINT)
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def _crt_fs(client, reader_constructor=None):
    from s3torchconnector.dcp.s3_file_system import S3FileSystem

    return S3FileSystem(_region(), s3_client=client, reader_constructor=reader_constructor)
