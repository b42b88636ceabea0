"""spec.scheduling.queueName: all-or-nothing admission through Kueue (docs/kueue.md). Pure.

A queued job's workers exist only while Kueue admits its Workload (kueue_workload.py). Until
then, and after an eviction, the job is ``Queued`` and says why (reason QueuedByKueue /
EvictedByKueue, the Workload's own message). An eviction is a planned stop: the workers
checkpoint and stop first (drain.py, as for a suspend), then the pods go, the quota reservation
is released and a new incarnation waits for the next admission; it resumes from that checkpoint.

``admission`` (before the finished/TTL step) keeps the Workload in step with the job: create it,
resize it while not reserved, mark it Finished when the job ends, delete it while suspended.
``queued`` (after the suspend step) holds the workers while the job is not admitted.
"""
from __future__ import annotations

from . import incidents as I
from .kueue_workload import ADMITTED, EVICTED, Admission
from .pass_state import Pass, Plan

QUEUED_PHASE = "Queued"
CONDITION = "Queued"


def admission(ps: Pass) -> Plan | None:
    """What the shell does to the Workload this pass (``Plan.workload``)."""
    a: Admission = ps.admission
    if a.state == "off":
        return None
    if ps.phase in ("Succeeded", "Failed"):
        if a.state not in ("missing", "finished"):
            ps.p.workload = ("finish", str(ps.phase), str(ps.st.get("message") or ""))
        return None
    if ps.job.suspend:
        # A suspended job holds no quota: its Workload goes once its workers are gone.
        if a.state != "missing" and not _live(ps):
            ps.p.workload = ("delete",)
        return None
    if a.state == "missing":
        ps.p.workload = ("create",)
    elif a.state == "pending":
        ps.p.workload = ("resize",)
    return None


def _live(ps: Pass) -> list[str]:
    """Every pod of the job that has not ended or is still terminating."""
    return [f.name for f in ps.obs.facts if not f.terminated]


def queued(ps: Pass) -> Plan | None:
    """Hold the workers while Kueue has not admitted the job; leave Queued once it has."""
    a: Admission = ps.admission
    if a.state in ("off", "finished"):
        return None
    if a.state == "admitted":
        if ps.phase != QUEUED_PHASE:
            return None
        msg = f"admitted by Kueue in ClusterQueue {a.cluster_queue or '?'}: {a.count} workers"
        again = bool(ps.restarts["total"] or ps.incarnation)
        ps.set_phase("Restarting" if again else "Created", ADMITTED, msg)
        ps.condition(CONDITION, False, ADMITTED, msg)
        ps.st.pop("lastRestartTime", None)   # admission is no failure: no restart backoff
        ps.event("Normal", "Admitted", msg)
        ps.p.requeue(0)
        return ps.done()
    b = ps.b
    ps.p.delete = [x.name for x in b.previous + b.active + b.succeeded + b.failed + b.excess + b.terminating
                   if not x.deleting]
    if a.state == "evicted":
        if _live(ps):
            ps.p.requeue(1.0)
        else:
            _requeue_after_eviction(ps, a)
    if ps.phase != QUEUED_PHASE:
        if ps.phase == "Running" or ps.has_condition("Running"):
            ps.condition("Running", False, a.reason, "the job waits for Kueue")
        ps.st.pop("startTime", None)   # activeDeadlineSeconds counts from the next start, as after a suspend
        ps.event("Normal" if a.state != "evicted" else "Warning", a.reason, a.message)
    if ps.phase != QUEUED_PHASE or ps.st.get("message") != a.message:
        ps.set_phase(QUEUED_PHASE, a.reason, a.message)
        ps.condition(CONDITION, True, a.reason, a.message)
    ps.phase = QUEUED_PHASE
    return ps.done()


def _requeue_after_eviction(ps: Pass, a: Admission) -> None:
    """Every worker is gone: release the quota (the shell patches the Workload) and prepare the next
    incarnation, which resumes from the checkpoint the drain wrote. Counted as a preemption."""
    ps.p.workload = ("release",)
    ps.st["incarnation"] = ps.incarnation + 1
    r = dict(ps.restarts)
    r["preemption"] += 1
    r["total"] += 1
    ps.st["restarts"] = r
    ps.record(I.note("Evicted", ps.incarnation, ps.now, a.message), detected=False)
    ps.event("Normal", "Requeued", f"every worker stopped; Workload released to Kueue ({EVICTED})")
