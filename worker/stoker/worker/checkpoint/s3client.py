"""The S3 client and transfer settings, without torch: the shard download process
(``stoker.worker.shards.fetchd``) imports this and not the DCP storage in ``s3.py``.

Endpoint and credentials come from the standard AWS variables (see ``stoker.common.env``).
"""
from __future__ import annotations

import os
import threading
from typing import Iterator

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from stoker.common import env

MiB = 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=16 * MiB,
    multipart_chunksize=16 * MiB,
    max_concurrency=8,
    use_threads=True,
)


def get_or_none(client, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when it does not exist (one GET; the caller retries)."""
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def make_client(*, connect_timeout: float = 3.0, read_timeout: float = 30.0, max_pool: int = 32):
    """An S3 client for the configured endpoint (path-style, which MinIO and IP
    endpoints need). botocore's own retries are kept short; the outer bounded
    retry in :func:`call_with_retry` decides when to give up."""
    endpoint = os.environ.get(env.S3_ENDPOINT) or None
    region = os.environ.get(env.S3_REGION) or "us-east-1"
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool,
        ),
    )


def crt_available() -> bool:
    """s3torchconnector's native client is installed (the worker extra has it)."""
    try:
        import s3torchconnectorclient._mountpoint_s3_client  # noqa: F401  (torch-free, ~15 ms)
    except ImportError:
        return False
    return True


def crt_missing(exc: BaseException) -> bool:
    """The CRT client's error for a key that does not exist (it has no error codes, only text)."""
    return "The key does not exist" in str(exc)


class CrtGets:
    """GETs through the AWS CRT (s3torchconnector's native client, without torch). The bytes move
    in C threads that do not hold the GIL: 57 shards of 270 KB fetched in a training process's
    threads cost its loop ~55 ms with this client and ~125 ms with boto3, the same as from a
    child process with this client (the issue-16 closing note). One native client per process:
    it is not fork-safe, so a forked child makes its own. Endpoint, credentials and region come
    from the same AWS variables as :func:`make_client`; its own retries are kept short, ours decide."""

    def __init__(self, max_attempts: int = 2):
        self._max_attempts = max_attempts
        self._native, self._pid = None, None
        self._lock = threading.Lock()

    def _client(self):
        with self._lock:
            if self._native is None or self._pid != os.getpid():
                from s3torchconnectorclient._mountpoint_s3_client import MountpointS3Client

                self._native = MountpointS3Client(
                    region=os.environ.get(env.S3_REGION) or "us-east-1",
                    endpoint=os.environ.get(env.S3_ENDPOINT) or None,
                    force_path_style=True, max_attempts=self._max_attempts)
                self._pid = os.getpid()
            return self._native

    def get(self, bucket: str, key: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes (``start`` to ``end``, end excluded, when given) in chunks."""
        return iter(self._client().get_object(bucket, key, start, end))
