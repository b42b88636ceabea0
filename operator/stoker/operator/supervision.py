"""Glue between one reconcile pass and detection/recovery/incidents. Pure.

The shell (controller.py) gathers ``Observed`` -- the raw pod facts, the nodes
under them, and what the heartbeat service knows per rank -- and the pure
reconcile pass calls:

  * ``decide()``  -> ``Decision`` | None: detect the root cause in the current
    incarnation and decide restart / replace / fail, honouring
    ``failurePolicy.exitCodeRules`` (FailJob fails at once, Ignore restarts for
    free, RestartJob spends the budget);
  * ``progress()`` -> status updates that do not need a failure:
    ``lastCheckpoint``, ``metrics``, and closing the open incident once the job
    trains again (time to recover);
  * ``avoid_nodes()`` -> the nodes new pods must not land on;
  * ``to_force_delete()`` -> pods stuck Terminating on lost nodes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from . import detection as D
from . import incidents as I
from . import recovery as R


@dataclasses.dataclass(frozen=True)
class Observed:
    facts: tuple[D.PodFacts, ...] = ()
    nodes: Mapping[str, D.NodeView] = dataclasses.field(default_factory=dict)
    nodes_listed: bool = False          # False: a missing node is unknown, not deleted
    ranks: tuple[D.RankProgress, ...] = ()
    workers: tuple[Any, ...] = ()       # heartbeat snapshots (metrics, world_size, step)
    mono_now: float = 0.0               # the heartbeat clock's "now"
    heartbeats: bool = False            # the heartbeat service runs: silence/hang checks apply


@dataclasses.dataclass(frozen=True)
class Decision:
    action: str                  # restart | replace | fail
    reason: str                  # condition reason
    message: str
    budget: str                  # userError | infrastructure | preemption
    counted: bool                # spent failurePolicy.maxRestarts
    increment: tuple[str, ...]   # status.restarts counters to bump
    finding: D.Finding
    incident: dict[str, Any]
    pods: tuple[str, ...] = ()   # replace: the pods that go
    avoid_nodes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    """Operator-wide knobs (STOKER_OPERATOR_*), next to the per-job spec."""

    max_infra_restarts: int = 50
    repeat_limit: int = 3
    startup_timeout_s: float = 600.0
    avoid_max: int = 3
    heartbeat_interval_s: float = 5.0
    drain_grace_s: float = 120.0         # how long a planned stop waits for the workers' checkpoint
    # The operator deletes its own pods with this grace period (SIGKILL after it): they are
    # either done already (after a drain) or being thrown away (a failed incarnation), and
    # the launcher must not hold them for a drain nobody asked for.
    delete_grace_s: int = 3
    # An outside deletion (preemption, eviction, `kubectl delete`) starts a drain only when
    # this much of its grace period is left, and the drain ends this long before the kill.
    preemption_min_grace_s: float = 10.0
    preemption_margin_s: float = 5.0

    def policy(self, job: Any) -> R.Policy:
        return R.Policy(max_restarts=job.max_restarts, max_infra_restarts=self.max_infra_restarts,
                        repeat_limit=self.repeat_limit, elastic=job.elastic, min_replicas=job.min_replicas,
                        avoid_max=self.avoid_max)

    def timeouts(self, job: Any) -> D.Timeouts:
        return dataclasses.replace(
            timeouts(job.heartbeat_timeout_seconds, getattr(job, "progress_timeout_seconds", None),
                     getattr(job, "startup_timeout_seconds", None) or self.startup_timeout_s),
            interval_s=self.heartbeat_interval_s)


def facts_from_views(pods: Sequence[Any]) -> list[D.PodFacts]:
    """PodFacts from reconcile's PodViews (no node, no times) when the shell gave no raw facts."""
    return [D.PodFacts(name=p.name, index=p.index, incarnation=p.incarnation, phase=p.phase, node=None,
                       deleting=p.deleting, exit_code=p.exit_code, reason=p.reason, disruption=p.disruption)
            for p in pods]


def timeouts(heartbeat_s: float, progress_s: float | None, startup_s: float | None = None) -> D.Timeouts:
    base = D.Timeouts()
    return dataclasses.replace(base, heartbeat_s=float(heartbeat_s),
                               progress_s=float(progress_s) if progress_s else None,
                               startup_s=float(startup_s) if startup_s else base.startup_s)


def _rule(rules: Sequence[Any], exit_code: int | None) -> str | None:
    if exit_code is None:
        return None
    for r in rules:
        if exit_code in r.exit_codes:
            return r.action
    return None


def decide(*, obs: Observed, incarnation: int, desired: int, restarts: Mapping[str, int],
           incidents: Sequence[Mapping[str, Any]] | None, policy: R.Policy, rules: Sequence[Any],
           t: D.Timeouts, now: dt.datetime, expect_heartbeats: bool = False) -> Decision | None:
    """The failure decision for the current incarnation, or None if it is healthy.

    ``expect_heartbeats``: the job's workers are known to heartbeat (status shows
    an earlier message), so a running pod that never sends one is stuck."""
    history = list(incidents or [])
    # Only pods that should run count: scaled-away and terminating ones exit on purpose.
    facts = [p for p in obs.facts if p.incarnation == incarnation and p.index < desired and not p.deleting]
    # Ranks of pods that are gone (scaled away, replaced) are history, not silence.
    present = {p.name for p in obs.facts if p.incarnation == incarnation and not p.deleting}
    ranks = [r for r in obs.ranks if r.incarnation == incarnation and (not r.pod_name or r.pod_name in present)] \
        if obs.heartbeats else []
    # FailJob anywhere wins: the user said this exit code is final.
    for p in sorted(facts, key=lambda p: (p.index, p.name)):
        if p.phase == "Failed" and _rule(rules, p.exit_code) == "FailJob":
            f = D.classify_pod(p, obs.nodes.get(p.node or ""), node_known=False) or \
                D.Finding(D.WORKER_CRASHED, f"worker pod {p.name} failed with exit code {p.exit_code}", pod=p.name)
            err = R.last_error_lines(f.error)
            msg = f"{f.message} and failurePolicy.exitCodeRules says FailJob" + (f"; last error: {err}" if err else "")
            inc = I.record(f, kind="JobFailed", budget=f.budget, incarnation=incarnation, now=now, message=msg,
                           error=err)
            return Decision("fail", "ExitCodeRule", msg, f.budget, False, (), f, inc)
    finding = D.detect(facts, obs.nodes, ranks, t, obs.mono_now, now, incarnation=incarnation,
                       nodes_listed=obs.nodes_listed, expect_heartbeats=expect_heartbeats and obs.heartbeats)
    if finding is None:
        return None
    failed = tuple(sorted({finding.pod} | {p.name for p in facts if p.phase == "Failed"} - {None}))  # type: ignore[operator]
    healthy = sum(1 for p in facts if p.phase in ("Pending", "Running") and p.name not in failed)
    action = R.decide(finding, restarts, history, policy, failed_pods=failed, survivors=healthy)
    rule = _rule(rules, finding.exit_code)
    err = R.last_error_lines(action.finding.error)
    original = finding.cause
    if isinstance(action, R.Fail):
        if rule == "Ignore":  # the user said: restart for free
            action = R.Restart(action.finding, action.budget, False, R.REASON_OF.get(action.finding.cause, "WorkerFailed"),
                               f"{finding.message} (exit code rule Ignore: not counted)")
        else:
            inc = I.record(action.finding, kind="JobFailed", budget=action.budget, incarnation=incarnation, now=now,
                           message=action.message, original_cause=original, error=err)
            return Decision("fail", action.reason, action.message, action.budget, False, (), action.finding, inc)
    counted = action.budget == "userError"
    increment: tuple[str, ...] = (action.budget, "total")
    if rule == "Ignore":
        counted, increment = False, ("total",)
    elif rule == "RestartJob" and action.budget != "userError":
        counted, increment = True, ("userError", "total")
    if isinstance(action, R.Replace):
        inc = I.record(action.finding, kind="Replace", budget=action.budget, incarnation=incarnation, now=now,
                       message=action.message, original_cause=original, error=err)
        return Decision("replace", action.reason, action.message, action.budget, False, increment,
                        action.finding, inc, action.pods, action.avoid_nodes)
    inc = I.record(action.finding, kind="Restart", budget=action.budget, incarnation=incarnation, now=now,
                   message=action.message, original_cause=original, error=err)
    return Decision("restart", action.reason, action.message, action.budget, counted, increment,
                    action.finding, inc, (), action.avoid_nodes)


RESTART_REQUESTED = "RestartRequested"


def manual_restart(request_id: str, incarnation: int, now: dt.datetime) -> Decision:
    """An on-call restart (annotation stoker.dev/restart-request): one coordinated
    restart that spends no budget."""
    f = D.Finding(RESTART_REQUESTED, f"restart requested by an operator (request {request_id})")
    inc = I.record(f, kind="Restart", budget="none", incarnation=incarnation, now=now)
    return Decision("restart", RESTART_REQUESTED, f.message, "none", False, ("total",), f, inc)


def bump(restarts: Mapping[str, int], increment: Sequence[str]) -> dict[str, int]:
    out = {k: int(restarts.get(k, 0)) for k in ("userError", "infrastructure", "preemption", "total")}
    for k in increment:
        out[k] = out.get(k, 0) + 1
    return out


def progress(status: Mapping[str, Any], obs: Observed, *, incarnation: int, checkpoint_uri: str | None,
             now: dt.datetime) -> dict[str, Any]:
    """Status fields from heartbeats: lastCheckpoint, metrics, and closing the open incident."""
    out: dict[str, Any] = {}
    if not obs.heartbeats:
        return out
    lc = I.last_checkpoint(obs.workers, checkpoint_uri, now, status.get("lastCheckpoint"))
    if lc is not None and lc != status.get("lastCheckpoint"):
        out["lastCheckpoint"] = lc
    current = [w for w in obs.workers if getattr(w, "incarnation", 0) == incarnation]
    if obs.facts:  # only pods that still exist
        present = {p.name for p in obs.facts if not p.deleting}
        current = [w for w in current if not getattr(w, "pod_name", "") or w.pod_name in present]
    if current:
        lead = min(current, key=lambda w: w.rank)
        m = dict(getattr(lead, "metrics", None) or {})
        metrics: dict[str, Any] = {"step": int(max(w.step for w in current))}
        if m.get("loss") is not None:
            metrics["loss"] = round(float(m["loss"]), 6)
        if m.get("tokens_per_second") is not None:
            metrics["tokensPerSecond"] = round(float(m["tokens_per_second"]), 3)
        old = dict(status.get("metrics") or {})
        if {k: v for k, v in old.items() if k != "updateTime"} != metrics:
            metrics["updateTime"] = I._fmt(now)
            out["metrics"] = metrics
        beats = [_beat(w, now, obs.mono_now) for w in sorted(current, key=lambda w: w.rank)]
        if beats != status.get("workerHeartbeats"):
            out["workerHeartbeats"] = beats
    # Recovered: a rank of this incarnation was seen completing a step (the
    # tracker records a step time only for an advance it observed) after the
    # incident -- for a Replace the survivors' step times from before it do not count.
    # A rank that already FINISHED counts too (short runs can finish between two heartbeats).
    since = _incident_mono(status.get("incidents"), now, obs.mono_now)
    training = any(r.incarnation == incarnation and r.step >= 0 and
                   (r.phase == "FINISHED" or (r.step_times and (since is None or r.advanced_at > since)))
                   for r in obs.ranks)
    closed = I.mark_recovered(status.get("incidents"), now=now, incarnation=incarnation, training=training)
    if closed is not None:
        out["incidents"] = closed
    # A save that did not commit (e.g. S3 down): training goes on, the incident is recorded once.
    items = out.get("incidents", status.get("incidents")) or []
    for w in sorted(current, key=lambda w: w.rank):
        m = getattr(w, "metrics", None) or {}
        if m.get("checkpoint_ok") is not False or m.get("checkpoint_step") is None:
            continue
        step = int(m["checkpoint_step"])
        if any(i.get("kind") == CHECKPOINT_FAILED and i.get("step") == step for i in items):
            continue
        last = (out.get("lastCheckpoint") or status.get("lastCheckpoint") or {}).get("step")
        f = D.Finding(CHECKPOINT_FAILED, f"the checkpoint of step {step} did not commit (rank {w.rank}); training "
                      f"continues, the newest committed checkpoint is step {last if last is not None else 'none'}",
                      pod=w.pod_name or None, rank=int(w.rank), node=w.node_name or None, step=step)
        items = I.append(items, I.record(f, kind=CHECKPOINT_FAILED, budget="none", incarnation=incarnation, now=now))
        out["incidents"] = items
    return out


CHECKPOINT_FAILED = "CheckpointFailed"


PREEMPTION = "Preemption"
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


def outside_deletions(current_pods: Sequence[D.PodFacts], *, incarnation: int, excess: Sequence[str],
                      now: dt.datetime, min_grace_s: float) -> list[D.PodFacts]:
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
               suspend: bool, excess: Sequence[str], current_pods: Sequence[D.PodFacts], now: dt.datetime,
               grace_s: float, min_grace_s: float = 10.0, margin_s: float = 5.0) -> DrainStep:
    """Before a planned stop the workers checkpoint and stop (STOP_AFTER_CHECKPOINT),
    so the next incarnation resumes exactly where they stopped (no step computed twice).

    start: a stop is wanted, the job checkpoints and its ranks heartbeat -> send the command.
           Suspend and ScaleDown are the operator's own; Preemption is a running worker pod
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
        started = D.parse_time(current.get("requestedAt"))
        if reason == PREEMPTION:  # the preempted pod is deleting: it counts until its trainer exits
            live = [p for p in current_pods if p.incarnation == incarnation and not p.terminated]
        else:
            live = [p for p in current_pods if p.incarnation == incarnation and not p.terminated and not p.deleting]
        left = grace_s - ((now - started).total_seconds() if started else grace_s)
        deadline = D.parse_time(current.get("deadline"))
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
        reason = "Suspend" if suspend else "ScaleDown"
        ranks = [r for r in mine if r.phase in _DRAIN_PHASES]
        if not ranks:
            return DrainStep("none")
        after = max(r.step for r in ranks)
        msg = (f"{'suspending' if suspend else 'scaling down'}: asking every worker to checkpoint and stop "
               f"(from step {after})")
        return DrainStep("start", reason, msg, {"reason": reason, "requestedAt": I._fmt(now), "afterStep": after})
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
    drain: dict[str, Any] = {"reason": PREEMPTION, "requestedAt": I._fmt(now), "afterStep": after,
                             "deadline": I._fmt(deadline), "pod": first.name}
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
                  step=d.get("afterStep"), onset=D.parse_time(d.get("requestedAt")))
    msg = f"{f.message} (preemption: does not count against failurePolicy.maxRestarts)"
    inc = I.record(f, kind="Restart", budget="preemption", incarnation=incarnation, now=now, message=msg)
    inc["drained"] = ds.complete
    return Decision("restart", DRAINED_FOR_PREEMPTION, msg, "preemption", False, ("preemption", "total"), f, inc)


def _incident_mono(incidents: Sequence[Mapping[str, Any]] | None, now: dt.datetime,
                   mono_now: float) -> float | None:
    """The open incident's detection time on the heartbeat (monotonic) clock; None
    when there is none or the clock is unknown."""
    i = I.open_incident(incidents)
    if i is None or not mono_now:
        return None
    t = D.parse_time(list(incidents or [])[i].get("time"))
    return None if t is None else mono_now - (now - t).total_seconds()


def _beat(w: Any, now: dt.datetime, mono_now: float) -> dict[str, Any]:
    """One rank's heartbeat for status.workerHeartbeats (what `stoker describe` shows)."""
    age = max(0.0, mono_now - getattr(w, "last_seen_monotonic", mono_now)) if mono_now else 0.0
    seen = now - dt.timedelta(seconds=age)
    return {"rank": int(w.rank), "pod": w.pod_name, "node": w.node_name, "step": int(w.step), "phase": w.phase,
            "lastHeartbeatTime": I._fmt(seen)}


def avoid_nodes(incidents: Sequence[Mapping[str, Any]] | None, max_n: int = 3) -> tuple[str, ...]:
    return R.nodes_to_avoid(list(incidents or []), None, max_n)


def to_force_delete(obs: Observed) -> list[str]:
    if not obs.nodes_listed:
        return []
    return D.force_delete(obs.facts, obs.nodes)
