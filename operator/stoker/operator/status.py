"""Status helpers: timestamps, conditions and phase bookkeeping. Pure."""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping

from stoker.common.timefmt import fmt_time, parse_time  # noqa: F401 (parse_time: re-exported for the policies)

PHASES = ("Created", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
FINISHED = ("Succeeded", "Failed")
CONDITION_TYPES = PHASES


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set. lastTransitionTime moves only when the
    status flips; reason/message update in place."""
    out: list[dict[str, Any]] = []
    want = "True" if status else "False"
    found = False
    for c in conditions:
        c = dict(c)
        if c.get("type") == type_:
            found = True
            if c.get("status") != want:
                c["lastTransitionTime"] = fmt_time(now)
            c.update(status=want, reason=reason, message=message)
        out.append(c)
    if not found:
        out.append({"type": type_, "status": want, "reason": reason, "message": message,
                    "lastTransitionTime": fmt_time(now)})
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c.get("type"), 99))


def with_observed_generation(conditions: Iterable[Mapping[str, Any]], generation: int | None) -> list[dict[str, Any]]:
    """metav1.Condition's observedGeneration: every pass re-decides every condition from the
    spec of `generation`, so each one is stamped with it."""
    if generation is None:
        return [dict(c) for c in conditions]
    return [{**c, "observedGeneration": int(generation)} for c in conditions]


def condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    for c in conditions:
        if c.get("type") == type_:
            return c
    return None


def time_left(since: dt.datetime | None, seconds: int | None, now: dt.datetime) -> tuple[bool, float | None]:
    """(passed, seconds left) for a limit of ``seconds`` counted from ``since``; (False, None)
    when there is no limit or nothing to count from."""
    if seconds is None or since is None:
        return False, None
    left = (since + dt.timedelta(seconds=int(seconds)) - now).total_seconds()
    return left <= 0, max(0.0, left)


def restarts_of(status: Mapping[str, Any]) -> dict[str, int]:
    r = status.get("restarts") or {}
    out = {k: int(r.get(k, 0)) for k in ("userError", "infrastructure", "preemption")}
    out["total"] = int(r.get("total", sum(out.values())))
    return out



# Status fields that heartbeats refresh: the lead rank's training metrics and each rank's last
# heartbeat. They change on nearly every heartbeat, so writing them on every pass would make the
# status write rate follow the heartbeat rate (and the passes heartbeats trigger).
HEARTBEAT_FIELDS = frozenset({"metrics", "workerHeartbeats"})


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Top-level status fields that differ (a key missing from ``new`` is a removal)."""
    return {k for k, v in new.items() if old.get(k) != v} | {k for k in old if k not in new}


def write_due(old: Mapping[str, Any], new: Mapping[str, Any], *, since_write_s: float | None,
              min_interval_s: float, urgent: bool = False) -> bool:
    """Whether a pass writes ``new`` over ``old`` (at most one write per pass either way).

    Anything but heartbeat-refreshed fields (phase, conditions, incidents, restarts, replicas,
    lastCheckpoint, ...) is written at once, and so is a pass with side effects that follow the
    write (``urgent``: Events, an incident, a drain). A change of heartbeat fields only waits until
    ``min_interval_s`` has passed since this job's last write (``since_write_s``; None: none yet by
    this operator), except the first time such a field appears; the pass after that writes it."""
    changed = changed_fields(old, new)
    if not changed:
        return False
    if urgent or changed - HEARTBEAT_FIELDS or any(k not in old for k in changed):
        return True
    return since_write_s is None or since_write_s >= min_interval_s
