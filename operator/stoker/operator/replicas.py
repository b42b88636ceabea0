"""spec.replicas / spec.minReplicas: which workers go, which are created, and the
phase from what runs. Pure."""
from __future__ import annotations

from . import incidents as I
from .drain import DRAINED_FOR_PREEMPTION
from .pass_state import Pass, Plan
from .policy_deadline import deadline_exceeded
from .policy_failure import backoff_seconds
from .policy_success import finishing
from .status import fmt_time, parse_time

# Restarts that lost nothing start the next incarnation without the failure backoff.
NO_BACKOFF = ("SpecChanged", "JobResumed", "ScaledDown", DRAINED_FOR_PREEMPTION)
# How often a pass looks again while a spare takes a lost worker's place (spare_taking_over).
SPARE_HOLD_POLL_S = 1.0


def delete_previous(ps: Pass) -> Plan | None:
    """Previous incarnations and scaled-away workers go."""
    ps.p.delete = [x.name for x in ps.b.previous if not x.deleting] + [x.name for x in ps.b.excess]
    return None


def create(ps: Pass) -> Plan | None:
    """Create what is missing (after the restart backoff)."""
    b, old = ps.b, ps.old
    present = {x.index for x in b.active + b.succeeded + b.failed + b.terminating}
    ps.missing = [i for i in range(ps.desired) if i not in present]
    wait = 0.0
    if ps.phase == "Restarting" and old.get("lastRestartTime") and ps.restarts["total"] > 0 \
            and old.get("reason") not in NO_BACKOFF:
        since = (ps.now - parse_time(old["lastRestartTime"])).total_seconds()  # type: ignore[operator]
        wait = backoff_seconds(ps.job, ps.restarts) - since
    if ps.missing and not finishing(b.succeeded):
        if wait > 0:
            ps.p.requeue(wait)
        elif spare_taking_over(ps):
            ps.p.requeue(SPARE_HOLD_POLL_S)
        else:
            ps.p.create = ps.missing
            if not ps.st.get("startTime"):
                ps.st["startTime"] = fmt_time(ps.now)
                _, left = deadline_exceeded(ps.job, ps.st, ps.now)
                ps.p.requeue(left)
    return None


def spare_taking_over(ps: Pass) -> bool:
    """A hot spare is taking a lost worker's place (an open ``spare`` Replace of this incarnation): the
    replaced pod is created again only once the job trains again, as the next spare. Created at once,
    its launcher could join the new round before the waiting spare (a fresh pod and a cold trainer in
    the spare's place, seen on process nodes)."""
    items = list(ps.st.get("incidents") or [])
    i = I.open_incident(items)
    return i is not None and bool(items[i].get("spare")) and int(items[i].get("incarnation", -1)) == ps.incarnation


def phase(ps: Pass) -> Plan | None:
    """Running once enough workers are ready."""
    job, desired = ps.job, ps.desired
    ready = sum(1 for x in ps.b.active if x.ready)
    if ready >= min(job.min_replicas, desired) and ready > 0 and not ps.missing and ps.phase != "Running":
        ps.set_phase("Running", "WorkersRunning", f"{ready} workers running")
        ps.condition("Running", True, "WorkersRunning", f"{ready} of {desired} workers ready")
        if ps.has_condition("Restarting"):
            ps.condition("Restarting", False, "WorkersRunning", "all workers are back")
        ps.event("Normal", "Running", f"{ready} of {desired} workers ready (incarnation {ps.incarnation})")
    return None


def scale_events(ps: Pass) -> Plan | None:
    """ScaledUp / ScaledDown Events when spec.replicas changed."""
    desired = ps.desired
    old_desired = ps.old.get("desiredReplicas")
    if old_desired is not None and old_desired != desired and ps.phase not in ("Suspended",):
        verb = "ScaledUp" if desired > old_desired else "ScaledDown"
        ps.event("Normal", verb, f"workers {old_desired} -> {desired}")
    return None
