"""The Kueue Workload of a queued TrainingJob (spec.scheduling.queueName). Pure.

The operator creates and owns one ``Workload`` (kueue.x-k8s.io/v1beta2) per queued job: one
podSet ``workers`` with count = spec.replicas (+ spec.spares) and the job's pod template, so Kueue admits all
workers or none (docs/kueue.md). This module builds it, reads where its admission stands
(``admission``) and builds the status patches an external job controller writes, as Kueue's own
jobframework does: after an eviction, once the workers are gone, the quota reservation is
cleared (``release_patch``: QuotaReserved/Admitted False, Requeued, no admission) so Kueue
requeues it; a finished job's Workload gets ``Finished`` (``finish_patch``), which frees its quota.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping

from stoker.common.timefmt import fmt_time

from .jobspec import JobView
from .pods import job_labels, owner_reference

GROUP, VERSION, PLURAL, KIND = "kueue.x-k8s.io", "v1beta2", "workloads", "Workload"
POD_SET = "workers"
# A TrainingJob label naming a Kueue WorkloadPriorityClass (Kueue's convention for jobs).
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"

QUEUED = "QueuedByKueue"      # status.reason while Kueue has not admitted the job
EVICTED = "EvictedByKueue"    # status.reason while an evicted job's workers drain and stop
ADMITTED = "AdmittedByKueue"


@dataclasses.dataclass(frozen=True)
class Admission:
    """Where the job's admission stands."""

    state: str             # off | missing | pending | admitted | evicted | finished
    count: int = 0         # admitted | evicted: the workers Kueue admitted
    reason: str = ""       # pending | missing | evicted: status.reason for the job
    message: str = ""
    cluster_queue: str = ""

    @property
    def held(self) -> bool:
        """No worker of the job may run (not admitted, or evicted)."""
        return self.state in ("missing", "pending", "evicted")


OFF = Admission("off")


def queue_name(job: JobView) -> str | None:
    return (job.scheduling or {}).get("queueName") or None


def workload_name(job: JobView) -> str:
    """Deterministic (idempotent creates); the uid part keeps a re-created job of the same name
    from adopting the old job's Workload while the garbage collector removes it."""
    return f"trainingjob-{job.name}-{job.uid[:5]}"[:253].rstrip("-.")


def _conditions(wl: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in (wl.get("status") or {}).get("conditions") or []}


def _true(conds: Mapping[str, Mapping[str, Any]], kind: str) -> bool:
    return (conds.get(kind) or {}).get("status") == "True"


def admitted_count(wl: Mapping[str, Any]) -> int:
    for a in ((wl.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []:
        if a.get("name") == POD_SET:
            return int(a.get("count") or 0)
    return 0


def admission(job: JobView, wl: Mapping[str, Any] | None) -> Admission:
    """The job's admission from its Workload (None: not created yet)."""
    queue = queue_name(job)
    if queue is None:
        return OFF
    if wl is None:
        return Admission("missing", reason=QUEUED,
                         message=f"waiting for Kueue: creating Workload {workload_name(job)} in LocalQueue {queue}")
    conds = _conditions(wl)
    cq = str(((wl.get("status") or {}).get("admission") or {}).get("clusterQueue") or "")
    if _true(conds, "Finished"):
        return Admission("finished")
    reserved, evicted = _true(conds, "QuotaReserved"), _true(conds, "Evicted")
    if evicted and reserved:
        why = str(conds["Evicted"].get("message") or conds["Evicted"].get("reason") or "evicted")
        return Admission("evicted", admitted_count(wl), EVICTED,
                         f"evicted by Kueue ({conds['Evicted'].get('reason')}): {why}; the workers checkpoint "
                         "and stop, then the job waits in its queue again", cq)
    if _true(conds, "Admitted") and not evicted:
        return Admission("admitted", admitted_count(wl), cluster_queue=cq)
    name = (wl.get("metadata") or {}).get("name", "")
    if (wl.get("spec") or {}).get("active") is False:
        said = f"Workload {name} is deactivated (spec.active=false)"
    else:
        quota = conds.get("QuotaReserved") or {}
        said = str(quota.get("message") or "") or "Kueue has not looked at it yet"
    again = " (re-queued after an eviction)" if evicted or _true(conds, "Requeued") else ""
    return Admission("pending", reason=QUEUED,
                     message=f"waiting for Kueue to admit Workload {name} in LocalQueue {queue}{again}: {said}")


def pod_set(job: JobView, count: int) -> dict[str, Any]:
    tmpl = dict(job.template)
    return {"name": POD_SET, "count": count,
            "template": {"metadata": dict(tmpl.get("metadata") or {}), "spec": dict(tmpl.get("spec") or {})}}


def workload(job: JobView, priority: tuple[str, str, int] | None = None) -> dict[str, Any]:
    """The Workload for ``job``: all its workers in one podSet. ``priority``: (group, kind, name)
    of the PriorityClass or WorkloadPriorityClass with its value, resolved by the shell."""
    spec: dict[str, Any] = {"queueName": queue_name(job), "podSets": [pod_set(job, job.pods)]}
    if priority is not None:
        group, kind, value = priority[0], priority[1], priority[2]
        name = job.labels.get(PRIORITY_CLASS_LABEL) or (job.scheduling or {}).get("priorityClassName")
        spec["priorityClassRef"] = {"group": group, "kind": kind, "name": name}
        spec["priority"] = int(value)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": workload_name(job), "namespace": job.namespace, "labels": job_labels(job.name),
                         "ownerReferences": [owner_reference(job)]},
            "spec": spec}


def priority_class(job: JobView) -> tuple[str, str, str] | None:
    """(group, kind, name) of the class whose value the Workload's priority takes: a
    WorkloadPriorityClass named by the job's label, else spec.scheduling.priorityClassName."""
    if job.labels.get(PRIORITY_CLASS_LABEL):
        return GROUP, "WorkloadPriorityClass", job.labels[PRIORITY_CLASS_LABEL]
    if (job.scheduling or {}).get("priorityClassName"):
        return "scheduling.k8s.io", "PriorityClass", job.scheduling["priorityClassName"]
    return None


def resize(wl: Mapping[str, Any], job: JobView) -> dict[str, Any] | None:
    """A spec patch giving a not yet admitted Workload the job's current size, or None."""
    if _true(_conditions(wl), "QuotaReserved"):
        return None   # a reserved size holds until the job is re-queued (docs/kueue.md, elastic jobs)
    sets = list((wl.get("spec") or {}).get("podSets") or [])
    if len(sets) == 1 and int(sets[0].get("count", 0)) == job.pods:
        return None
    return {"spec": {"podSets": [pod_set(job, job.pods)]}}


def _condition(kind: str, status: bool, reason: str, message: str, gen: int, now: dt.datetime) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message[:32768],
            "lastTransitionTime": fmt_time(now), "observedGeneration": gen}


def _with(conds: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Set a condition as meta.SetStatusCondition does (the transition time moves only on a change)."""
    for i, c in enumerate(conds):
        if c.get("type") == new["type"]:
            if c.get("status") == new["status"]:
                new = {**new, "lastTransitionTime": c.get("lastTransitionTime", new["lastTransitionTime"])}
            conds[i] = new
            return conds
    return conds + [new]


def release_patch(wl: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """After an eviction, with every worker gone: clear the quota reservation so Kueue requeues
    the Workload (jobframework's reconciler does the same for its jobs: Requeued is True for a
    preemption or a node failure, QuotaReserved False with reason Pending, Admitted False,
    no admission). Guarded by resourceVersion."""
    meta = wl.get("metadata") or {}
    gen = int(meta.get("generation") or 0)
    conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
    ev = _conditions(wl).get("Evicted") or {}
    reason, msg = str(ev.get("reason") or "Evicted"), str(ev.get("message") or "evicted")
    conds = _with(conds, _condition("Requeued", reason in ("Preempted", "NodeFailures"), reason, msg, gen, now))
    conds = _with(conds, _condition("QuotaReserved", False, "Pending", msg, gen, now))
    conds = _with(conds, _condition("Admitted", False, "NoReservation", "The workload has no reservation", gen, now))
    return {"metadata": {"resourceVersion": meta.get("resourceVersion")},
            "status": {"conditions": conds, "admission": None}}


def finish_patch(wl: Mapping[str, Any], phase: str, message: str, now: dt.datetime) -> dict[str, Any]:
    """The job ended: the Workload is Finished (reason Succeeded or Failed) and Kueue frees its quota."""
    meta = wl.get("metadata") or {}
    conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
    conds = _with(conds, _condition("Finished", True, phase, message or f"TrainingJob {phase}",
                                    int(meta.get("generation") or 0), now))
    return {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": {"conditions": conds}}
