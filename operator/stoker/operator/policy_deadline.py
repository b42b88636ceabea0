"""spec.runPolicy.activeDeadlineSeconds (counted from status.startTime, which suspend resets). Pure."""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from .jobspec import JobView
from .pass_state import Pass, Plan
from .status import parse_time


def deadline_exceeded(job: JobView, status: Mapping[str, Any], now: dt.datetime) -> tuple[bool, float | None]:
    """(exceeded, seconds until it will be) for spec.runPolicy.activeDeadlineSeconds."""
    start = parse_time(status.get("startTime"))
    if job.active_deadline_seconds is None or start is None:
        return False, None
    left = (start + dt.timedelta(seconds=int(job.active_deadline_seconds)) - now).total_seconds()
    return left <= 0, max(0.0, left)


def deadline(ps: Pass) -> Plan | None:
    exceeded, left = deadline_exceeded(ps.job, ps.st, ps.now)
    if exceeded:
        ps.finish("Failed", "DeadlineExceeded",
                  f"the job ran longer than runPolicy.activeDeadlineSeconds={ps.job.active_deadline_seconds}")
        ps.p.delete = ps.cleanup()
        return ps.done()
    ps.p.requeue(left)
    return None
