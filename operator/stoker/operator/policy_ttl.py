"""Time-based run policies: activeDeadlineSeconds and ttlSecondsAfterFinished. Pure."""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from .jobspec import JobView
from .status import parse_time


def deadline_exceeded(job: JobView, status: Mapping[str, Any], now: dt.datetime) -> tuple[bool, float | None]:
    """(exceeded, seconds until it will be) for spec.runPolicy.activeDeadlineSeconds."""
    start = parse_time(status.get("startTime"))
    if job.active_deadline_seconds is None or start is None:
        return False, None
    left = (start + dt.timedelta(seconds=int(job.active_deadline_seconds)) - now).total_seconds()
    return left <= 0, max(0.0, left)


def ttl_expired(job: JobView, status: Mapping[str, Any], now: dt.datetime) -> tuple[bool, float | None]:
    """(expired, seconds until it will be) for spec.runPolicy.ttlSecondsAfterFinished."""
    done = parse_time(status.get("completionTime"))
    if job.ttl_seconds_after_finished is None or done is None:
        return False, None
    left = (done + dt.timedelta(seconds=int(job.ttl_seconds_after_finished)) - now).total_seconds()
    return left <= 0, max(0.0, left)
