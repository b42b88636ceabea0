"""The S3 client and transfer settings, without torch: the shard download process
(``stoker.worker.shards.fetchd``) imports this and not the DCP storage in ``s3.py``.

Endpoint and credentials come from the standard AWS variables (see ``stoker.common.env``).
"""
from __future__ import annotations

import os

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
