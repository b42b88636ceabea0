"""Checkpoint layout in object storage (or a local directory).

    <root>/step-00000100/            one folder per checkpoint, zero-padded step
        __0_0.distcp ...             shards written by torch.distributed.checkpoint
        .metadata                    DCP metadata (written by the coordinator)
        stoker.json                  Stoker's manifest: step, world size, shard list
        COMMITTED                    commit marker, written LAST, after every shard is durable
    <root>/FENCE                     the newest incarnation that started: older ones change nothing

A checkpoint exists for readers only when COMMITTED exists. Anything else is a
partial write and is ignored (and eventually garbage-collected).
"""
from __future__ import annotations

import re

STEP_PREFIX = "step-"
STEP_DIGITS = 8
COMMIT_MARKER = "COMMITTED"
MANIFEST = "stoker.json"
DCP_METADATA = ".metadata"
FENCE = "FENCE"  # at the root: the newest incarnation that started (stoker.worker.checkpoint.fence)

_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d{{{STEP_DIGITS}}})$")


def step_dir(step: int) -> str:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{STEP_PREFIX}{step:0{STEP_DIGITS}d}"


def parse_step_dir(name: str) -> int | None:
    m = _STEP_RE.match(name.rstrip("/"))
    return int(m.group(1)) if m else None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b'); raises ValueError naming the fix."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r} (expected s3://BUCKET[/PREFIX])")
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r} (expected s3://BUCKET[/PREFIX])")
    return bucket, prefix.strip("/")
