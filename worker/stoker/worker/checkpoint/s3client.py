"""The S3 client and transfer settings, without torch: the shard download process
(``stoker.worker.shards.fetchd``) imports this and not the DCP storage in ``s3.py``.

Endpoint and credentials come from the standard AWS variables (see ``stoker.common.env``).
"""
from __future__ import annotations

import importlib.util
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
    """s3torchconnector (its CRT client) is installed: the worker extra has it. Not imported here."""
    return importlib.util.find_spec("s3torchconnector") is not None


class CrtGets:
    """GETs through the AWS CRT: s3torchconnector's client, the checkpoints' (``s3.crt_client``).
    The bytes move in C threads that do not hold the GIL: 57 shards of 270 KB fetched in a
    training process's threads cost its loop ~55 ms with this client and ~125 ms with boto3, the
    same as from a child process with this client (the issue-16 closing note). The client is made
    on first use (importing it imports torch: a torch-free process such as fetchd never makes one);
    s3torchconnector's fork handlers release it before a fork and make a new one in the child (a
    bare native client in a forked child crashed). Made as ``s3.make_crt_client`` makes the
    checkpoints' shard client: its own retries short, ours decide."""

    def __init__(self):
        self._client = None
        self._lock = threading.Lock()

    def get(self, bucket: str, key: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes (``start`` to ``end``, end excluded, when given) in chunks: one GET."""
        with self._lock:
            if self._client is None:
                from .s3 import make_crt_client

                self._client = make_crt_client()
        # the private stream call: one GET and no HEAD (tests/worker_ckpt/test_s3_private_api.py checks it)
        return iter(self._client._get_object_stream(bucket, key, start, end))
