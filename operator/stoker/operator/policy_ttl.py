"""spec.runPolicy.ttlSecondsAfterFinished, and what a finished job's pass does. Pure."""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from .jobspec import JobView
from .pass_state import Pass, Plan
from .status import FINISHED, parse_time, time_left


def ttl_expired(job: JobView, status: Mapping[str, Any], now: dt.datetime) -> tuple[bool, float | None]:
    """(expired, seconds until it will be) for spec.runPolicy.ttlSecondsAfterFinished."""
    return time_left(parse_time(status.get("completionTime")), job.ttl_seconds_after_finished, now)


def finished(ps: Pass) -> Plan | None:
    """A finished job: clean its pods up (cleanPodPolicy) and delete it once its TTL passed."""
    if ps.phase not in FINISHED:
        return None
    ps.p.delete = ps.cleanup()
    expired, left = ttl_expired(ps.job, ps.st, ps.now)
    if expired:
        ps.p.delete_job = True
        ps.event("Normal", "TTLExpired",
                 f"deleting the job: ttlSecondsAfterFinished={ps.job.ttl_seconds_after_finished} passed")
    ps.p.requeue(left)
    return ps.close()
