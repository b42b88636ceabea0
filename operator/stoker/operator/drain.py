"""Planned stops: before a suspend, a scale-down or a preemption the workers
checkpoint and stop, so the next incarnation resumes exactly where they stopped. Pure.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from stoker.common.timefmt import fmt_time, parse_time

from . import detection as D
from . import incidents as I
from .pass_state import Pass, Plan
from .policy_failure import Decision
from .supervision import Observed
from .podview import PodView

PREEMPTION = "Preemption"
KUEUE_EVICTION = "KueueEviction"   # a queued job's Workload was evicted (policy_kueue): stop like a suspend
DRAINED_FOR_PREEMPTION = "DrainedForPreemption"   # restart reason after a preemption drain
_DRAIN_PHASES = ("TRAINING", "CHECKPOINTING")
# A preempted incarnation may still be restoring: the trainer looks at the stop request after its first step.
_PREEMPTION_PHASES = ("STARTING", "RESTORING", "TRAINING", "CHECKPOINTING")


@dataclasses.dataclass(frozen=True)
class DrainStep:
    """Where a planned stop (suspend, scale-down, preemption) stands this pass."""

    kind: str                            # none | start | wait | done
    reason: str = ""                     # Suspend | ScaleDown | Preemption
    message: str = ""
    drain: dict[str, Any] | None = None  # status.drain to write (start/wait); the finished one (done)
    complete: bool = False               # done: every worker checkpointed and stopped (not the grace running out)


def outside_deletions(current_pods: Sequence[PodView], *, incarnation: int, excess: Sequence[str],
                      now: dt.datetime, min_grace_s: float) -> list[PodView]:
    """Running pods of the incarnation that someone other than the operator is deleting
    with enough grace left to drain (kube-scheduler preemption, the eviction API, a node
    drain, `kubectl delete`). The operator's own deletes use a grace period shorter than
    ``min_grace_s`` (Settings.delete_grace_s), so they never count."""
    out = []
    for p in current_pods:
        if p.incarnation != incarnation or not p.deleting or p.terminated or p.name in excess:
            continue
        if p.deletion_at is None or (p.deletion_at - now).total_seconds() < min_grace_s:
            continue
        out.append(p)
    return sorted(out, key=lambda p: (p.deletion_at, p.index))  # type: ignore[arg-type, return-value]


def drain_step(*, status: Mapping[str, Any], obs: Observed, incarnation: int, checkpointing: bool,
               suspend: bool, excess: Sequence[str], current_pods: Sequence[PodView], now: dt.datetime,
               grace_s: float, min_grace_s: float = 10.0, margin_s: float = 5.0,
               suspend_reason: str = "Suspend") -> DrainStep:
    """Before a planned stop the workers checkpoint and stop (STOP_AFTER_CHECKPOINT),
    so the next incarnation resumes exactly where they stopped (no step computed twice).

    start: a stop is wanted, the job checkpoints and its ranks heartbeat -> send the command.
           Suspend and ScaleDown are the operator's own (``suspend_reason`` names a suspend that
           is not spec.runPolicy.suspend: KueueEviction); Preemption is a running worker pod
           being deleted by someone else (``outside_deletions``): its launcher holds the
           kubelet's SIGTERM while the trainer drains, and the drain must end ``margin_s``
           before the pod's deletionTimestamp (when the kubelet SIGKILLs it);
    wait:  until every pod of the incarnation has exited, or ``grace_s`` (for a preemption
           also the deadline) passed;
    done:  carry out the stop (delete / restart at the new size / restart after the
           preemption). A drain already in status is finished even if the stop is no longer wanted.
    """
    current = status.get("drain")
    if current:
        reason = current.get("reason", "")
        started = parse_time(current.get("requestedAt"))
        if reason == PREEMPTION:  # the preempted pod is deleting: it counts until its trainer exits
            live = [p for p in current_pods if p.incarnation == incarnation and not p.terminated]
        else:
            live = [p for p in current_pods if p.incarnation == incarnation and not p.terminated and not p.deleting]
        left = grace_s - ((now - started).total_seconds() if started else grace_s)
        deadline = parse_time(current.get("deadline"))
        if deadline is not None:
            left = min(left, (deadline - now).total_seconds())
        if not live:
            return DrainStep("done", reason, "every worker checkpointed and stopped", dict(current), True)
        if left <= 0:
            why = (f"the preempted pod's grace period ran out ({len(live)} workers still running)"
                   if deadline is not None and (deadline - now).total_seconds() <= 0
                   else f"drain grace period {grace_s:g}s ran out ({len(live)} workers still running)")
            return DrainStep("done", reason, f"{why}; the last committed checkpoint is used", dict(current))
        return DrainStep("wait", reason, "waiting for the workers to checkpoint and stop", dict(current))
    if not obs.heartbeats or not checkpointing:
        return DrainStep("none")
    mine = [r for r in obs.ranks if r.incarnation == incarnation]
    if suspend or excess:
        reason = suspend_reason if suspend else "ScaleDown"
        ranks = [r for r in mine if r.phase in _DRAIN_PHASES]
        if not ranks:
            return DrainStep("none")
        after = max(r.step for r in ranks)
        doing = {"Suspend": "suspending", "ScaleDown": "scaling down", KUEUE_EVICTION: "evicted by Kueue"}
        msg = f"{doing.get(reason, reason)}: asking every worker to checkpoint and stop (from step {after})"
        return DrainStep("start", reason, msg, {"reason": reason, "requestedAt": fmt_time(now), "afterStep": after})
    going = outside_deletions(current_pods, incarnation=incarnation, excess=excess, now=now, min_grace_s=min_grace_s)
    ranks = [r for r in mine if r.phase in _PREEMPTION_PHASES]
    if not going or not ranks:
        return DrainStep("none")
    first = going[0]
    after = max(r.step for r in ranks)
    deadline = first.deletion_at - dt.timedelta(seconds=margin_s)  # type: ignore[operator]
    by = f" ({first.disruption})" if first.disruption else ""
    msg = (f"worker pod {first.name} is being deleted{by} with {(first.deletion_at - now).total_seconds():.0f}s "  # type: ignore[operator]
           f"of grace: asking every worker to checkpoint and stop (from step {after})")
    drain: dict[str, Any] = {"reason": PREEMPTION, "requestedAt": fmt_time(now), "afterStep": after,
                             "deadline": fmt_time(deadline), "pod": first.name}
    if first.node:
        drain["node"] = first.node
    if first.disruption:
        drain["disruption"] = first.disruption
    return DrainStep("start", PREEMPTION, msg, drain)


def preemption_restart(ds: DrainStep, incarnation: int, now: dt.datetime) -> Decision:
    """The restart after a preemption drain: a new incarnation resumes from the checkpoint the
    workers just wrote (or, if the grace ran out, the last committed one). Preemption budget:
    not counted against failurePolicy.maxRestarts."""
    d = dict(ds.drain or {})
    pod, why = d.get("pod"), d.get("disruption") or ""
    # An eviction (eviction API, node drain, kubelet) names its node; anything else
    # (kube-scheduler preemption, a plain delete) is a preemption.
    cause, verb = (D.EVICTED, "evicted") if why in D.EVICTION_REASONS else (D.PREEMPTED, "preempted")
    by = f" ({why})" if why else ""
    how = ("every worker checkpointed and stopped" if ds.complete
           else "the drain did not finish in time, the last committed checkpoint is used")
    f = D.Finding(cause, f"worker pod {pod} was {verb}{by}; {how}", pod=pod, node=d.get("node"),
                  step=d.get("afterStep"), onset=parse_time(d.get("requestedAt")))
    msg = f"{f.message} (preemption: does not count against failurePolicy.maxRestarts)"
    inc = I.record(f, kind="Restart", budget="preemption", incarnation=incarnation, now=now, message=msg)
    inc["drained"] = ds.complete
    return Decision("restart", DRAINED_FOR_PREEMPTION, msg, "preemption", False, ("preemption", "total"), f, inc)



def drain(ps: Pass) -> Plan | None:
    """Start, wait for or finish a planned stop (suspend, scale-down, a worker pod
    preempted with a grace period)."""
    job, b, s = ps.job, ps.b, ps.settings
    evicted = ps.admission is not None and ps.admission.held   # Kueue: not (or no longer) admitted
    ds = drain_step(status=ps.old, obs=ps.obs, incarnation=ps.incarnation, checkpointing=bool(job.checkpoint),
                    suspend=(job.suspend and ps.phase != "Suspended") or (evicted and ps.phase != "Queued"),
                    suspend_reason="Suspend" if job.suspend else KUEUE_EVICTION,
                    excess=[] if evicted else [x.name for x in b.excess],
                    current_pods=[f for f in ps.obs.facts if f.incarnation == ps.incarnation], now=ps.now,
                    grace_s=s.drain_grace_s, min_grace_s=s.preemption_min_grace_s, margin_s=s.preemption_margin_s)
    if ds.kind in ("start", "wait"):
        ps.st["drain"] = ds.drain
        ps.p.drain_reason, ps.p.drain_id = ds.reason, str((ds.drain or {}).get("requestedAt") or "")
        if ds.kind == "start":
            ps.p.drain_request = ds.reason
            ps.event("Normal", "Draining", ds.message)
        ps.p.delete = [x.name for x in b.previous if not x.deleting]
        ps.p.requeue(1.0)
        return ps.done()
    if ds.kind != "done":
        return None
    ps.st.pop("drain", None)
    ps.event("Normal", "Drained", ds.message)
    if ds.reason == "ScaleDown" and not job.suspend:
        ps.st["incarnation"] = ps.incarnation + 1
        ps.set_phase("Restarting", "ScaledDown",
                     f"resuming with {ps.desired} workers from the checkpoint the workers just wrote")
        ps.condition("Restarting", True, "ScaledDown", ps.st["message"])
        ps.p.requeue(0)
        return ps.done()
    if ds.reason == PREEMPTION and not job.suspend:
        ps.drained = preemption_restart(ds, ps.incarnation, ps.now)  # carried out by policy_failure, as a restart
    return None
