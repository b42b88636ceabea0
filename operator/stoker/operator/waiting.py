"""Why a job's workers cannot start, in words a user acts on. Pure.

Waiting is never silent: a worker pod that the scheduler cannot place, whose
container cannot be configured (a missing Secret/ConfigMap), whose image cannot be
pulled, or whose init container keeps failing, and a pod the API server refuses to
create (quota, LimitRange, an admission webhook) all become the job's ``Waiting``
condition (reason = the cause, message = what to do, lastTransitionTime = since
when), its ``status.reason``/``message`` while it has not started, and one Warning
Event per new cause. ``failurePolicy.pendingTimeoutSeconds`` turns a wait that lasts
longer into ``Failed`` with the same reason; unset, the job keeps waiting.

``pod_waiting`` reads one raw pod (pods.pod_view keeps the result); ``assess``
decides for the job (reconcile calls it once per pass); refusals.py folds a refused
pod create into the status the shell is about to write.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Iterable, Mapping, Sequence

from .status import fmt_time, parse_time, set_condition

CONDITION = "Waiting"
# Refused creates that may succeed later (refusals.py); reconcile keeps these while pods
# are still missing (no pod exists to show the cause again).
QUOTA_EXCEEDED = "QuotaExceeded"
POD_CREATE_REFUSED = "PodCreateRefused"
REFUSALS = (QUOTA_EXCEEDED, POD_CREATE_REFUSED)
# Causes found before any pod exists (refused creates, preflight.py): kept while pods are missing.
HELD = REFUSALS + ("MissingSecret", "MissingConfigMap", "CheckpointBucketMissing", "CheckpointAccessDenied")

_IMAGE = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_CONFIG = ("CreateContainerConfigError",)
_CREATE = ("CreateContainerError", "RunContainerError", "StartError")
# Most actionable first: one cause per job is shown.
ORDER = ("CreateContainerConfigError", "ImagePullBackOff", "InitContainerFailing", "CreateContainerError",
         "Unschedulable")


@dataclasses.dataclass(frozen=True)
class Waiting:
    reason: str       # Unschedulable | CreateContainerConfigError | ImagePullBackOff | InitContainerFailing | ...
    message: str      # what is wrong and what to do
    pod: str = ""
    since: str | None = None  # RFC 3339: when the pod started waiting for this


def _hint(reason: str) -> str:
    if reason == "Unschedulable":
        return ("no node can run this worker: lower the template's resource requests or nodeSelector/affinity, "
                "or add nodes")
    if reason in _CONFIG:
        return "create the missing Secret/ConfigMap (or key) in the job's namespace, or fix the reference"
    if reason in _IMAGE:
        return "check the image name and tag, and imagePullSecrets for a private registry"
    if reason == "InitContainerFailing":
        return "fix the init container's command (see its logs: kubectl logs POD -c CONTAINER)"
    return "fix the container's command, workingDir or security settings"


def _scheduling(pod: Mapping[str, Any]) -> Waiting | None:
    name = (pod.get("metadata") or {}).get("name", "")
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            msg = (c.get("message") or "").strip()
            return Waiting("Unschedulable", f"pod {name} cannot be scheduled: {msg}; {_hint('Unschedulable')}",
                           name, c.get("lastTransitionTime"))
    return None


def _container(pod: Mapping[str, Any]) -> Waiting | None:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name, since = meta.get("name", ""), status.get("startTime") or meta.get("creationTimestamp")
    found: list[Waiting] = []
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for cs in status.get(key) or []:
            w = (cs.get("state") or {}).get("waiting") or {}
            reason, msg = w.get("reason") or "", (w.get("message") or "").strip()
            what = f"{'init container' if init else 'container'} {cs.get('name')} of pod {name}"
            if reason in _CONFIG:
                found.append(Waiting(reason, f"{what} cannot start: {msg}; {_hint(reason)}", name, since))
            elif reason in _IMAGE:
                found.append(Waiting("ImagePullBackOff", f"{what}: image {cs.get('image')!r} cannot be pulled"
                                     f" ({reason}{': ' + msg if msg else ''}); {_hint(reason)}", name, since))
            elif reason in _CREATE:
                found.append(Waiting("CreateContainerError", f"{what} cannot start: {msg or reason}; "
                                     f"{_hint(reason)}", name, since))
            elif init and reason == "CrashLoopBackOff":
                last = (cs.get("lastState") or {}).get("terminated") or {}
                said = (last.get("message") or "").strip()
                found.append(Waiting("InitContainerFailing", f"{what} failed {cs.get('restartCount', 0)} times "
                                     f"(last exit code {last.get('exitCode')}){': ' + said if said else ''}; "
                                     f"{_hint('InitContainerFailing')}", name, since))
    return min(found, key=lambda w: ORDER.index(w.reason)) if found else None


def pod_waiting(pod: Mapping[str, Any]) -> Waiting | None:
    """Why this (Pending) pod cannot start, or None if it is not blocked."""
    if (pod.get("status") or {}).get("phase", "Pending") != "Pending" or (pod.get("metadata") or {}).get(
            "deletionTimestamp"):
        return None
    return _container(pod) or _scheduling(pod)


def job_waiting(waits: Iterable[Waiting | None]) -> Waiting | None:
    """The one cause to show for the job: the most actionable, then the oldest."""
    found = [w for w in waits if w is not None]
    if not found:
        return None
    return min(found, key=lambda w: (ORDER.index(w.reason) if w.reason in ORDER else len(ORDER), w.since or "",
                                     w.pod))


# ----------------------------------------------------------------------------- the job's condition


@dataclasses.dataclass
class Verdict:
    conditions: list[dict[str, Any]]
    events: list[tuple[str, str, str]]          # (type, reason, message)
    fail: tuple[str, str] | None = None         # (reason, message): pendingTimeoutSeconds ran out
    requeue: float | None = None                # seconds until pendingTimeoutSeconds runs out
    reason: tuple[str, str] | None = None       # (reason, message) for status.reason/message, if it changes


def current(conds: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for c in conds:
        if c.get("type") == CONDITION and c.get("status") == "True":
            return c
    return None


def assess(conds: Sequence[Mapping[str, Any]], w: Waiting | None, *, phase: str, status_reason: str | None,
           timeout_s: int | None, now: dt.datetime, keep_refusal: bool = False) -> Verdict:
    """Set or clear the Waiting condition for this pass; fail the job once a wait is
    older than ``timeout_s``. ``keep_refusal``: pods are still missing, so a refused
    create or a preflight problem (HELD) stays the cause until a create succeeds."""
    cur = current(conds)
    out = Verdict([dict(c) for c in conds], [])
    if w is None and cur is not None and keep_refusal and cur.get("reason") in HELD:
        said = str(cur.get("message") or "").rsplit(" (waiting since ", 1)[0]
        w = Waiting(str(cur["reason"]), said, since=cur.get("lastTransitionTime"))
    if w is None:
        if cur is not None:
            out.conditions = set_condition(conds, CONDITION, False, "WorkersStarted", "no worker is blocked", now)
            if status_reason == cur.get("reason"):
                back = next((c for c in conds if c.get("type") == phase), None) or {}
                out.reason = (str(back.get("reason") or "WorkersStarting"),
                              str(back.get("message") or "waiting for the workers to start"))
        return out
    since = w.since or (cur or {}).get("lastTransitionTime") or fmt_time(now)
    if cur is not None and cur.get("reason") == w.reason:
        since = min(since, str(cur.get("lastTransitionTime") or since))
    text = f"{w.message} (waiting since {since})"
    out.conditions = set_condition(conds, CONDITION, True, w.reason, text, now)
    if cur is None or cur.get("reason") != w.reason:
        out.events.append(("Warning", w.reason, w.message))
    if phase != "Running":
        out.reason = (w.reason, text)
    waited = (now - (parse_time(since) or now)).total_seconds()
    if timeout_s is not None and waited >= timeout_s:
        out.fail = (w.reason, f"{w.message}; gave up after failurePolicy.pendingTimeoutSeconds={timeout_s} "
                              f"(waiting since {since})")
        out.conditions = set_condition(out.conditions, CONDITION, False, w.reason, "the job failed", now)
    elif timeout_s is not None:
        out.requeue = timeout_s - waited
    return out


def fold(status: Mapping[str, Any], w: Waiting, now: dt.datetime) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """``status`` with ``w`` as the Waiting cause (the shell found it after the plan: a
    refused create, a preflight problem): (status, events)."""
    st = dict(status)
    v = assess(list(st.get("conditions") or []), w, phase=str(st.get("phase") or ""),
               status_reason=st.get("reason"), timeout_s=None, now=now)
    st["conditions"] = v.conditions
    if v.reason:
        st["reason"], st["message"] = v.reason
    return st, v.events
