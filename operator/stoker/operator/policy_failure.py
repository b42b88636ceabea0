"""Restart backoff: how long the operator waits before creating the next
incarnation after a failure. Pure.

What a failure *is* (its cause and budget) is decided by ``detection`` and
``recovery``; this module only spaces restarts out so that a job failing over and
over does not hammer the cluster: ``failurePolicy.backoffSeconds`` doubled per
restart, capped at ``MAX_BACKOFF_S``.
"""
from __future__ import annotations

from .jobspec import JobView

MAX_BACKOFF_S = 600


def backoff_seconds(job: JobView, restarts: dict[str, int]) -> float:
    """Wait before creating the next incarnation after the n-th failure restart."""
    n = max(1, int(restarts.get("total", 0)))
    if job.backoff_seconds <= 0:
        return 0.0
    return float(min(MAX_BACKOFF_S, job.backoff_seconds * 2 ** (n - 1)))
