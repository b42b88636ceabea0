"""spec.failurePolicy: what a failure costs and how the pass carries it out. Pure.

``detection`` names the root cause and ``recovery`` decides restart / replace / pause /
fail; ``decide`` applies ``failurePolicy.exitCodeRules`` on top (FailJob fails at
once, Ignore restarts for free, RestartJob spends the budget); ``backoff_seconds``
spaces restarts out (``failurePolicy.backoffSeconds`` doubled per restart, capped
at ``MAX_BACKOFF_S``). The steps ``failure`` and ``restart`` carry the decision
out within one reconcile pass.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from . import detection as D
from . import incidents as I
from . import recovery as R
from . import supervision
from .jobspec import JobView
from .pass_state import Pass, Plan
from .pods import spec_hash
from .status import fmt_time
from .supervision import Observed

MAX_BACKOFF_S = 600


def backoff_seconds(job: JobView, restarts: dict[str, int]) -> float:
    """Wait before creating the next incarnation after the n-th failure restart."""
    n = max(1, int(restarts.get("total", 0)))
    if job.backoff_seconds <= 0:
        return 0.0
    return float(min(MAX_BACKOFF_S, job.backoff_seconds * 2 ** (n - 1)))


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
                       nodes_listed=obs.nodes_listed, expect_heartbeats=expect_heartbeats and obs.heartbeats,
                       lost_nodes=obs.lost_nodes, in_place_restarts=policy.elastic or policy.in_place,
                       newest_heard=obs.newest_heard, together=policy.in_place and not policy.elastic,
                       launchers=obs.launchers, spares=policy.spares)
    if finding is None:
        return None
    failed = tuple(sorted({finding.pod} | {p.name for p in facts if p.phase == "Failed"} - {None}))  # type: ignore[operator]
    healthy = sum(1 for p in facts if p.phase in ("Pending", "Running") and p.name not in failed)
    action = R.decide(finding, restarts, history, policy, failed_pods=failed, survivors=healthy)
    rule = _rule(rules, finding.exit_code)
    err = R.last_error_lines(action.finding.error)
    original = finding.cause
    if isinstance(action, R.Pause):
        inc = I.record(action.finding, kind="Paused", budget="none", incarnation=incarnation, now=now,
                       message=action.message, error=err)
        return Decision("pause", D.TRAINING_PAUSED, action.message, "none", False, (), action.finding, inc)
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
        if action.spare:   # the survivors restart in place: their launchers' reports join this incident
            inc.update(inPlace=True, spare=True)
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



def failure(ps: Pass, decided: Decision | None = None) -> Plan | None:
    """Fail the job, or replace the failed workers (elastic: the survivors keep training
    and the next passes recreate the replaced indexes). A whole-job restart is carried
    out by ``restart``, after the on-call requests. ``decided``: a decision made elsewhere
    (an in-place restart's report, policy_inplace) carried out here."""
    job, old = ps.job, ps.old
    ps.p.force_delete = supervision.to_force_delete(ps.obs)
    sv = decided or ps.drained or decide(
        obs=ps.obs, incarnation=ps.incarnation, desired=ps.desired, restarts=ps.restarts,
        incidents=old.get("incidents"), policy=ps.settings.policy(job), rules=job.exit_code_rules,
        t=ps.settings.timeouts(job), now=ps.now,
        expect_heartbeats=bool(old.get("metrics") or old.get("workerHeartbeats")))
    if sv is not None and sv.finding.settle_s > 0:   # a peer's own failure may still show: look again soon
        ps.p.requeue(sv.finding.settle_s)
        sv = None
    ps.decision = sv
    if sv is not None and sv.action == "fail":
        ps.finish("Failed", sv.reason, sv.message)
        ps.delete(ps.cleanup())
        ps.record(sv.incident)
        return ps.done()
    if sv is not None and sv.action == "pause":
        return _pause(ps, sv)
    if sv is not None and sv.action == "replace":
        ps.st["restarts"] = bump(ps.restarts, sv.increment)
        ps.record(sv.incident)
        ps.p.restart_cause = sv.budget
        ps.delete(sv.pods)
        ps.p.force_delete += [n for n in sv.pods if sv.finding.cause == "NodeLost" and n not in ps.p.force_delete]
        ps.event("Warning", sv.reason, I.event_message(sv.incident))
    return None


def _pause(ps: Pass, sv: Decision) -> Plan:
    """spec.health said Pause: no pods, phase Suspended (reason TrainingPaused) until a restart request
    (``policy_suspend`` holds it); the trainer committed every checkpoint before the anomaly."""
    hold = (f"{sv.message}; resume with `kubectl stoker resume {ps.job.name}` (to skip the anomaly's window, "
            "first add it to spec.health.skip: see status.health)")
    ps.set_phase("Suspended", D.TRAINING_PAUSED, hold)
    ps.condition("Suspended", True, D.TRAINING_PAUSED, hold)
    ps.condition("Running", False, D.TRAINING_PAUSED, "training paused by spec.health")
    ps.st.pop("startTime", None)  # like a suspend: activeDeadlineSeconds counts running time
    ps.delete(ps.cleanup())
    ps.record(sv.incident)
    ps.event("Warning", D.TRAINING_PAUSED, I.event_message(sv.incident))
    return ps.done()


def restart(ps: Pass) -> Plan | None:
    """A whole-job restart (a failure, an on-call request, or a changed pod template):
    status first -- the next pass deletes this incarnation and creates the next."""
    sv = ps.decision
    if sv is not None and sv.action == "restart":
        budget, reason, message, increment = sv.budget, sv.reason, sv.message, sv.increment
    else:
        stale = [x for x in ps.b.active if x.spec_hash and x.spec_hash != spec_hash(ps.job)]
        if not stale:
            return None
        budget, reason, message, increment = ("none", "SpecChanged", "the pod template changed: restarting all "
                                              f"workers ({stale[0].name} is stale)", ())
    new_restarts = bump(ps.restarts, increment)
    if budget != "none":
        ps.p.restart_cause = budget
    ps.st["restarts"] = new_restarts
    ps.st["incarnation"] = ps.incarnation + 1
    ps.st["lastRestartTime"] = fmt_time(ps.now)
    ps.set_phase("Restarting", reason, message)
    ps.condition("Restarting", True, reason, message)
    ps.condition("Running", False, reason, "restarting all workers")
    if sv is not None:
        ps.record(sv.incident)
        text = I.event_message(sv.incident)
    else:
        ps.record(I.note("Restart", ps.incarnation, ps.now, message), detected=False)
        text = message
    lost_nothing = budget == "none" or (sv is not None and bool(sv.incident.get("drained")))
    ps.event("Normal" if lost_nothing else "Warning", reason,
             f"{text}; restarting as incarnation {ps.incarnation + 1}"
             f" (user-error budget used {new_restarts['userError']}/{ps.job.max_restarts})")
    ps.p.requeue(0)
    return ps.done()
