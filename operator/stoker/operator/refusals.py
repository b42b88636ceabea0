"""A worker pod the API server refuses to create, as the job's status. Pure.

400/422 (the pod is invalid: a template that got past the CRD schema, an operator-made
field the server rejects) can never succeed: the job ends ``Failed`` with reason
``InvalidPodTemplate``, the server's message, an incident and an Event. 403 (quota,
LimitRange, an admission webhook's denial), 429 and 5xx may pass later: the job's
``Waiting`` condition says why and the next resync tries again. The shell (controller.py)
logs one line per new cause, never a traceback.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from . import incidents as incident_log
from .status import fmt_time, set_condition
from .waiting import CONDITION, POD_CREATE_REFUSED, QUOTA_EXCEEDED, Waiting, current, fold

INVALID_POD_TEMPLATE = "InvalidPodTemplate"


def classify_refusal(status: int, message: str) -> tuple[str, bool]:
    """(reason, final) for a pod create the API server refused with ``status``.
    400/422: the pod is invalid and will be every time (final). 403 (quota, LimitRange,
    a webhook's denial), 429 and 5xx may pass later: the job waits and retries."""
    if status in (400, 422):
        return INVALID_POD_TEMPLATE, True
    if status == 403 and "exceeded quota" in message:
        return QUOTA_EXCEEDED, False
    return POD_CREATE_REFUSED, False


def refusal_text(reason: str, pod: str, message: str) -> str:
    if reason == INVALID_POD_TEMPLATE:
        return (f"the API server refused worker pod {pod}: {message}; fix spec.template "
                "(the field named above) and re-create the job")
    if reason == QUOTA_EXCEEDED:
        return (f"the API server refused worker pod {pod}: {message}; free quota in the namespace or lower "
                "the template's requests (retrying every resync)")
    return f"the API server refused worker pod {pod}: {message} (retrying every resync)"


def fold_refusal(status: Mapping[str, Any], *, pod: str, code: int, message: str,
                 now: dt.datetime) -> tuple[dict[str, Any], list[tuple[str, str, str]], dict[str, Any] | None]:
    """The status to write after the API server refused to create ``pod`` (HTTP ``code``):
    (status, events, incident). Final refusals fail the job (InvalidPodTemplate) and
    are an incident; others are the Waiting condition until a create succeeds."""
    reason, final = classify_refusal(code, message)
    text = refusal_text(reason, pod, message)
    if not final:
        st, events = fold(status, Waiting(reason, text, pod), now)
        return st, events, None
    st = dict(status)
    conds = list(st.get("conditions") or [])
    st.update(phase="Failed", reason=reason, message=text, completionTime=fmt_time(now))
    for type_, ok, msg in (("Failed", True, text), ("Running", False, "the job finished")):
        conds = set_condition(conds, type_, ok, reason, msg, now)
    if current(conds):
        conds = set_condition(conds, CONDITION, False, reason, "the job failed", now)
    st["conditions"] = conds
    incident = {"time": fmt_time(now), "kind": "JobFailed", "cause": "userError", "detectedCause": reason,
                "pod": pod, "incarnation": int(st.get("incarnation", 0)), "message": text[:2000],
                "error": message[:1000]}
    st["incidents"] = incident_log.append(st.get("incidents"), incident)
    return st, [("Warning", reason, text)], incident
