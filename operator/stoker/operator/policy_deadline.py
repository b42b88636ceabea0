"""spec.runPolicy.activeDeadlineSeconds (counted from status.startTime, which suspend resets). Pure."""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from .jobspec import JobView
from .pass_state import Pass, Plan
from .status import parse_time, time_left


def deadline_exceeded(job: JobView, status: Mapping[str, Any], now: dt.datetime) -> tuple[bool, float | None]:
    """(exceeded, seconds until it will be) for spec.runPolicy.activeDeadlineSeconds."""
    return time_left(parse_time(status.get("startTime")), job.active_deadline_seconds, now)


def deadline(ps: Pass) -> Plan | None:
    exceeded, left = deadline_exceeded(ps.job, ps.st, ps.now)
    if exceeded:
        ps.finish("Failed", "DeadlineExceeded",
                  f"the job ran longer than runPolicy.activeDeadlineSeconds={ps.job.active_deadline_seconds}")
        ps.p.delete = ps.cleanup()
        return ps.done()
    ps.p.requeue(left)
    return None
