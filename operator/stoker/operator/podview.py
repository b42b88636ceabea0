"""One view of an observed worker pod, parsed once per pass. Pure.

Reconcile buckets pods by it (phase, readiness, owner, spec hash) and detection
names failures from it (exit code, reason, node, times): both read the same view.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any, Mapping

from stoker.common import labels as L
from stoker.common import last_step
from stoker.common.timefmt import parse_time

from .waiting import Waiting, pod_waiting

SPEC_HASH = f"{L.GROUP}/spec-hash"
EXCLUDED_NODES = f"{L.GROUP}/excluded-nodes"   # node_exclusion.py: comma-separated node names


@dataclasses.dataclass(frozen=True)
class PodView:
    name: str
    index: int
    incarnation: int
    phase: str                       # Pending | Running | Succeeded | Failed | Unknown
    node: str | None = None          # spec.nodeName
    ready: bool = False              # Running and the Ready condition is True
    deleting: bool = False
    exit_code: int | None = None     # the trainer container's, once terminated
    reason: str = ""                 # pod.status.reason, else the trainer's termination reason
    disruption: str | None = None    # DisruptionTarget condition reason, if any
    spec_hash: str = ""
    owner_uid: str | None = None
    finished_at: dt.datetime | None = None
    message: str = ""                # termination message (last error lines), if any
    deletion_at: dt.datetime | None = None  # metadata.deletionTimestamp: when the kubelet kills what is left
    deletion_grace_s: int | None = None     # metadata.deletionGracePeriodSeconds
    started_at: dt.datetime | None = None   # the trainer container started running
    waiting: Waiting | None = None   # why this Pending pod cannot start (waiting.py)
    last_step: int | None = None     # the failed rank's last completed step, as its launcher said
    excluded_nodes: tuple[str, ...] = ()  # nodes it may not be scheduled on (node_exclusion.py)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    terminated = finished


def worker_identity(pod: Mapping[str, Any]) -> tuple[int, int] | None:
    """(replica index, incarnation) from our labels; None if it is not one of our worker pods."""
    lbl = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return int(lbl[L.REPLICA_INDEX]), int(lbl[L.INCARNATION])
    except (KeyError, ValueError):
        return None


def _trainer_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """containerStatuses of the trainer container (the pod's first container)."""
    trainer_name = (((pod.get("spec") or {}).get("containers") or [{}])[0]).get("name")
    return [cs for cs in (pod.get("status") or {}).get("containerStatuses") or [] if cs.get("name") == trainer_name]


def trainer_terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The trainer container's (first container's) current or last `terminated` state."""
    term = None
    for cs in _trainer_statuses(pod):
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or term
    return term


# Lines the launcher and torchrun's agent add around a failed worker (glog-style
# "E1202 ... torch/distributed/elastic/...", logging-style "ERROR:torch.distributed.elastic...",
# our own exit line): not what the trainer said.
_LAUNCHER_NOISE = re.compile(r"torch[/.]distributed[/.]elastic|^stoker warm: |" + last_step.LINE_START)


def trainer_said(message: str) -> str:
    """A failed trainer's termination message (its log tail, FallbackToLogsOnError) without
    the launcher's and torchrun's own lines."""
    return "\n".join(ln for ln in (message or "").splitlines() if not _LAUNCHER_NOISE.search(ln)).strip()


def failed_init(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The terminated record of a failed init container (the trainer never ran), its message
    naming the container: with restartPolicy Never such a pod fails like a crashed trainer."""
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term.get("exitCode"):
            said = (term.get("message") or "").strip()
            return {**term, "message": f"init container {cs.get('name')} exited with {term['exitCode']}"
                                       f"{': ' + said if said else ''}"}
    return None


def trainer_started_at(pod: Mapping[str, Any]) -> str | None:
    """When the trainer container (first container) started running, else the pod's startTime."""
    for cs in _trainer_statuses(pod):
        started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
        if started:
            return started
    return (pod.get("status") or {}).get("startTime")


def disruption_reason(pod: Mapping[str, Any]) -> str | None:
    """The reason of a True DisruptionTarget condition (eviction, preemption, ...), if any."""
    disruption = None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disruption = cond.get("reason") or "Disrupted"
    return disruption


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    """Parse an observed pod; None if it is not one of our worker pods."""
    ident = worker_identity(pod)
    if ident is None:
        return None
    index, incarnation = ident
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    term = trainer_terminated(pod) or failed_init(pod) or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    owner_uid = None
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            owner_uid = ref.get("uid")
    phase = status.get("phase") or "Pending"
    return PodView(
        name=meta.get("name", ""), index=index, incarnation=incarnation, phase=phase,
        node=(pod.get("spec") or {}).get("nodeName") or None,
        ready=ready and phase == "Running",
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=term.get("exitCode"),
        reason=status.get("reason") or term.get("reason") or "",
        disruption=disruption_reason(pod),
        spec_hash=(meta.get("annotations") or {}).get(SPEC_HASH, ""),
        owner_uid=owner_uid,
        finished_at=parse_time(term.get("finishedAt")),
        message=trainer_said(term.get("message") or ""),
        deletion_at=parse_time(meta.get("deletionTimestamp")),
        deletion_grace_s=meta.get("deletionGracePeriodSeconds"),
        started_at=parse_time(trainer_started_at(pod)),
        waiting=pod_waiting(pod),
        last_step=last_step.step_of(term.get("message")),
        excluded_nodes=tuple(n for n in ((meta.get("annotations") or {}).get(EXCLUDED_NODES) or "").split(",") if n),
    )
