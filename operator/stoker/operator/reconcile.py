"""One reconcile pass as a pure function: (job, observed pods, now) -> Plan.

The shape follows kubernetes-sigs/jobset: stop if deleting or finished → sort the
owned pods into buckets → failure policy → success policy → create what is
missing → suspend/resume → status computed in memory. The shell (controller.py)
executes the plan: pod deletes/creates, then ONE status write, then Events.

Safety when the operator dies at any line: a whole-job restart is first only
*written* (status.incarnation += 1); the next pass deletes the previous
incarnation's pods and creates the new ones under deterministic names, so every
step can be repeated and nothing is created twice.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Sequence

from stoker.common import labels as L

from . import incidents as incident_log
from . import policy_failure, policy_success, policy_ttl, supervision, waiting
from .jobspec import JobView
from .pods import PodView, pod_name, selector, spec_hash
from .status import FINISHED, fmt_time, parse_time, restarts_of, set_condition

MAX_INCIDENTS = incident_log.MAX_INCIDENTS


@dataclasses.dataclass
class Buckets:
    active: list[PodView] = dataclasses.field(default_factory=list)      # current, Pending/Running
    succeeded: list[PodView] = dataclasses.field(default_factory=list)
    failed: list[PodView] = dataclasses.field(default_factory=list)
    excess: list[PodView] = dataclasses.field(default_factory=list)      # index >= replicas
    terminating: list[PodView] = dataclasses.field(default_factory=list)  # deletionTimestamp set
    previous: list[PodView] = dataclasses.field(default_factory=list)    # other incarnations
    foreign: list[PodView] = dataclasses.field(default_factory=list)     # owned by another uid


@dataclasses.dataclass
class Event:
    type: str      # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass
class Plan:
    create: list[int] = dataclasses.field(default_factory=list)   # replica indexes, current incarnation
    incarnation: int = 0
    delete: list[str] = dataclasses.field(default_factory=list)   # pod names
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None
    restart_cause: str | None = None   # for metrics, when this pass decides a restart
    force_delete: list[str] = dataclasses.field(default_factory=list)  # stuck Terminating on lost nodes
    avoid_nodes: tuple[str, ...] = ()  # new pods must not land here (recently failed this job)
    incident: dict[str, Any] | None = None  # the incident this pass recorded (metrics, node health)
    checkpoint_request: str | None = None  # on-call CHECKPOINT_NOW to send (request id)
    annotate: dict[str, str] = dataclasses.field(default_factory=dict)  # *-handled annotations to set
    drain_request: str | None = None  # planned stop: ask the workers to checkpoint and stop (a new drain)
    drain_reason: str | None = None   # the drain in progress (new or not) ...
    drain_id: str = ""                # ... and its id (status.drain.requestedAt): the shell sends its command
                                      # once per drain and operator process, so a restarted operator asks again

    def requeue(self, seconds: float | None) -> None:
        if seconds is None:
            return
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def bucket(job: JobView, pods: Sequence[PodView], incarnation: int, desired: int) -> Buckets:
    b = Buckets()
    for p in sorted(pods, key=lambda p: (p.incarnation, p.index, p.name)):
        if p.owner_uid and job.uid and p.owner_uid != job.uid:
            b.foreign.append(p)
        elif p.incarnation != incarnation:
            b.previous.append(p)
        elif p.deleting:
            b.terminating.append(p)
        elif p.index >= desired:
            b.excess.append(p)
        elif p.phase == "Succeeded":
            b.succeeded.append(p)
        elif p.phase == "Failed":
            b.failed.append(p)
        else:
            b.active.append(p)
    return b


def _cleanup(job: JobView, b: Buckets) -> list[str]:
    """Pods to delete once the job finished (spec.runPolicy.cleanPodPolicy)."""
    out = [p.name for p in b.previous if not p.deleting]
    out += [p.name for p in b.excess]
    if job.clean_pod_policy in ("Running", "All"):
        out += [p.name for p in b.active]
    if job.clean_pod_policy == "All":
        out += [p.name for p in b.succeeded + b.failed]
    return out


def plan(job: JobView, pods: Sequence[PodView], now: dt.datetime, obs: supervision.Observed | None = None,
         settings: supervision.Settings | None = None) -> Plan:
    """`obs`: raw pod facts, nodes and heartbeats (the shell's observations);
    without it the pass decides from the pod views alone."""
    settings = settings or supervision.Settings()
    if obs is None:
        obs = supervision.Observed(facts=tuple(supervision.facts_from_views(pods)))
    old = dict(job.status)
    st: dict[str, Any] = {k: v for k, v in old.items()}
    conds = list(old.get("conditions") or [])
    phase = old.get("phase")
    incarnation = int(old.get("incarnation", 0))
    restarts = restarts_of(old)
    p = Plan(incarnation=incarnation)
    if job.deleting:
        return p

    desired = 0 if job.suspend else job.replicas
    b = bucket(job, pods, incarnation, desired)

    def finish(phase_: str, reason: str, message: str) -> None:
        nonlocal conds
        st["phase"], st["reason"], st["message"] = phase_, reason, message
        st["completionTime"] = fmt_time(now)
        conds = set_condition(conds, phase_, True, reason, message, now)
        conds = set_condition(conds, "Running", False, reason, "the job finished", now)
        if any(c.get("type") == "Restarting" for c in conds):
            conds = set_condition(conds, "Restarting", False, reason, "the job finished", now)
        if waiting.current(conds):
            conds = set_condition(conds, waiting.CONDITION, False, reason, "the job finished", now)
        p.events.append(Event("Normal" if phase_ == "Succeeded" else "Warning", reason, message))

    # Always: the first pass records the job as created.
    if not any(c.get("type") == "Created" for c in conds):
        conds = set_condition(conds, "Created", True, "JobCreated", f"TrainingJob {job.name} accepted", now)
        p.events.append(Event("Normal", "JobCreated", f"TrainingJob {job.name} accepted"))
        st["phase"] = phase = phase or "Created"
        st.setdefault("incarnation", 0)
        st.setdefault("restarts", restarts)

    st.update(supervision.progress(st, obs, incarnation=incarnation,
                                   checkpoint_uri=(job.checkpoint or {}).get("uri"), now=now))

    if phase in FINISHED:
        p.delete = _cleanup(job, b)
        expired, left = policy_ttl.ttl_expired(job, st, now)
        if expired:
            p.delete_job = True
            p.events.append(Event("Normal", "TTLExpired",
                                  f"deleting the job: ttlSecondsAfterFinished={job.ttl_seconds_after_finished} passed"))
        p.requeue(left)
        _fill_counts(job, st, b, desired)
        st["conditions"] = conds
        p.status = st
        return p

    # Deadline (counted from startTime, which suspend resets).
    exceeded, left = policy_ttl.deadline_exceeded(job, st, now)
    if exceeded:
        finish("Failed", "DeadlineExceeded",
               f"the job ran longer than runPolicy.activeDeadlineSeconds={job.active_deadline_seconds}")
        p.delete = _cleanup(job, b)
        return _done(p, job, st, b, desired, conds)
    p.requeue(left)

    # Planned stops (suspend, scale-down, a worker pod preempted with a grace period): the
    # workers checkpoint and stop first, so the next incarnation resumes exactly where they stopped.
    ds = supervision.drain_step(status=old, obs=obs, incarnation=incarnation, checkpointing=bool(job.checkpoint),
                                suspend=job.suspend and phase != "Suspended", excess=[x.name for x in b.excess],
                                current_pods=[f for f in obs.facts if f.incarnation == incarnation], now=now,
                                grace_s=settings.drain_grace_s, min_grace_s=settings.preemption_min_grace_s,
                                margin_s=settings.preemption_margin_s)
    drained: supervision.Decision | None = None
    if ds.kind in ("start", "wait"):
        st["drain"] = ds.drain
        p.drain_reason, p.drain_id = ds.reason, str((ds.drain or {}).get("requestedAt") or "")
        if ds.kind == "start":
            p.drain_request = ds.reason
            p.events.append(Event("Normal", "Draining", ds.message))
        p.delete = [x.name for x in b.previous if not x.deleting]
        p.requeue(1.0)
        return _done(p, job, st, b, desired, conds)
    if ds.kind == "done":
        st.pop("drain", None)
        p.events.append(Event("Normal", "Drained", ds.message))
        if ds.reason == "ScaleDown" and not job.suspend:
            st["incarnation"] = incarnation + 1
            st["phase"], st["reason"] = "Restarting", "ScaledDown"
            st["message"] = f"resuming with {desired} workers from the checkpoint the workers just wrote"
            conds = set_condition(conds, "Restarting", True, "ScaledDown", st["message"], now)
            p.requeue(0)
            return _done(p, job, st, b, desired, conds)
        if ds.reason == supervision.PREEMPTION and not job.suspend:
            drained = supervision.preemption_restart(ds, incarnation, now)  # carried out below, as a restart

    # Suspend / resume.
    if job.suspend:
        p.delete = [x.name for x in b.previous + b.active + b.succeeded + b.failed + b.excess if not x.deleting]
        if phase != "Suspended":
            st["phase"], st["reason"], st["message"] = "Suspended", "JobSuspended", "runPolicy.suspend is true"
            conds = set_condition(conds, "Suspended", True, "JobSuspended", "runPolicy.suspend is true: worker pods deleted", now)
            conds = set_condition(conds, "Running", False, "JobSuspended", "the job is suspended", now)
            st.pop("startTime", None)
            p.events.append(Event("Normal", "Suspended", "runPolicy.suspend is true: deleting worker pods"))
        return _done(p, job, st, b, desired, conds)
    if phase == "Suspended":
        # Resume as a new incarnation; the next pass creates its pods.
        st["incarnation"] = incarnation + 1
        st["phase"], st["reason"], st["message"] = "Restarting", "JobResumed", "runPolicy.suspend is false"
        conds = set_condition(conds, "Suspended", False, "JobResumed", "runPolicy.suspend is false", now)
        st.pop("lastRestartTime", None)
        p.events.append(Event("Normal", "Resumed", f"resuming as incarnation {incarnation + 1}"))
        p.requeue(0)
        return _done(p, job, st, b, desired, conds)

    # Previous incarnations and scaled-away workers go.
    p.delete = [x.name for x in b.previous if not x.deleting] + [x.name for x in b.excess]

    # Failure detection and recovery (detection.py / recovery.py via supervision.py).
    p.force_delete = supervision.to_force_delete(obs)
    sv = drained or supervision.decide(
        obs=obs, incarnation=incarnation, desired=desired, restarts=restarts, incidents=old.get("incidents"),
        policy=settings.policy(job), rules=job.exit_code_rules, t=settings.timeouts(job), now=now,
        expect_heartbeats=bool(old.get("metrics") or old.get("workerHeartbeats")))
    if sv is not None and sv.action == "fail":
        finish("Failed", sv.reason, sv.message)
        p.delete += [n for n in _cleanup(job, b) if n not in p.delete]
        st["incidents"] = incident_log.append(st.get("incidents"), sv.incident)
        p.incident = sv.incident
        return _done(p, job, st, b, desired, conds)
    if sv is not None and sv.action == "replace":
        # Elastic: survivors keep training; the next passes recreate the replaced indexes.
        st["restarts"] = supervision.bump(restarts, sv.increment)
        st["incidents"] = incident_log.append(st.get("incidents"), sv.incident)
        p.incident = sv.incident
        p.restart_cause = sv.budget
        p.delete += [n for n in sv.pods if n not in p.delete]
        p.force_delete += [n for n in sv.pods if sv.finding.cause == "NodeLost" and n not in p.force_delete]
        p.events.append(Event("Warning", sv.reason, incident_log.event_message(sv.incident)))
    restart: tuple | None = None  # (budget, reason, message, increment)
    # On-call requests (annotations set by `stoker checkpoint` / `stoker restart`), acted on once each.
    requests = dict(old.get("requests") or {})
    rr = job.annotations.get(L.RESTART_REQUEST)
    if rr and rr not in (requests.get("restart"), job.annotations.get(L.RESTART_REQUEST_HANDLED)):
        requests["restart"] = rr
        st["requests"] = requests
        p.annotate[L.RESTART_REQUEST_HANDLED] = rr
        if sv is None:
            sv = supervision.manual_restart(rr, incarnation, now)
    cr = job.annotations.get(L.CHECKPOINT_REQUEST)
    if cr and cr not in (requests.get("checkpoint"), job.annotations.get(L.CHECKPOINT_REQUEST_HANDLED)):
        requests["checkpoint"] = cr
        st["requests"] = requests
        p.checkpoint_request = cr
        p.annotate[L.CHECKPOINT_REQUEST_HANDLED] = cr
        p.events.append(Event("Normal", "CheckpointRequested", f"asking every worker to checkpoint now (request {cr})"))
    if sv is not None and sv.action == "restart":
        restart = (sv.budget, sv.reason, sv.message, sv.increment)
    else:
        stale = [x for x in b.active if x.spec_hash and x.spec_hash != spec_hash(job)]
        if stale:
            restart = ("none", "SpecChanged",
                       f"the pod template changed: restarting all workers ({stale[0].name} is stale)", ())
    if restart is not None:
        budget, reason, message, increment = restart
        new_restarts = supervision.bump(restarts, increment)
        if budget != "none":
            p.restart_cause = budget
        st["restarts"] = new_restarts
        st["incarnation"] = incarnation + 1
        st["lastRestartTime"] = fmt_time(now)
        st["phase"], st["reason"], st["message"] = "Restarting", reason, message
        conds = set_condition(conds, "Restarting", True, reason, message, now)
        conds = set_condition(conds, "Running", False, reason, "restarting all workers", now)
        if sv is not None:
            st["incidents"] = incident_log.append(st.get("incidents"), sv.incident)
            p.incident = sv.incident
            text = incident_log.event_message(sv.incident)
        else:
            _incident(st, now, "Restart", None, None, None, incarnation, message)
            text = message
        lost_nothing = budget == "none" or (sv is not None and bool(sv.incident.get("drained")))
        p.events.append(Event("Normal" if lost_nothing else "Warning", reason,
                              f"{text}; restarting as incarnation {incarnation + 1}"
                              f" (user-error budget used {new_restarts['userError']}/{job.max_restarts})"))
        p.requeue(0)
        # Status first; the next pass deletes this incarnation and creates the next.
        return _done(p, job, st, b, desired, conds)

    # Success policy.
    if policy_success.succeeded(job, b.active, b.succeeded, b.failed):
        finish("Succeeded", "AllWorkersSucceeded", f"all {len(b.succeeded)} workers finished training")
        p.delete += [n for n in _cleanup(job, b) if n not in p.delete]
        return _done(p, job, st, b, desired, conds)

    # Create what is missing (after the restart backoff).
    present = {x.index for x in b.active + b.succeeded + b.failed + b.terminating}
    missing = [i for i in range(desired) if i not in present]
    wait = 0.0
    if phase == "Restarting" and old.get("lastRestartTime") and restarts["total"] > 0 and old.get("reason") not in ("SpecChanged", "JobResumed", "ScaledDown", supervision.DRAINED_FOR_PREEMPTION):
        since = (now - parse_time(old["lastRestartTime"])).total_seconds()
        wait = policy_failure.backoff_seconds(job, restarts) - since
    if missing and not policy_success.finishing(b.succeeded):
        if wait > 0:
            p.requeue(wait)
        else:
            p.create = missing
            if not st.get("startTime"):
                st["startTime"] = fmt_time(now)
                _, left = policy_ttl.deadline_exceeded(job, st, now)
                p.requeue(left)

    # Phase from what runs.
    ready = sum(1 for x in b.active if x.ready)
    if ready >= min(job.min_replicas, desired) and ready > 0 and not missing:
        if phase != "Running":
            st["phase"], st["reason"], st["message"] = "Running", "WorkersRunning", f"{ready} workers running"
            conds = set_condition(conds, "Running", True, "WorkersRunning", f"{ready} of {desired} workers ready", now)
            if any(c.get("type") == "Restarting" for c in conds):
                conds = set_condition(conds, "Restarting", False, "WorkersRunning", "all workers are back", now)
            p.events.append(Event("Normal", "Running", f"{ready} of {desired} workers ready (incarnation {incarnation})"))
    conds, gave_up = _why_waiting(p, job, st, b, conds, now)
    if gave_up:  # failurePolicy.pendingTimeoutSeconds
        p.create = []
        finish("Failed", *gave_up)
        _incident(st, now, "JobFailed", None, None, None, incarnation, gave_up[1])
        p.delete += [n for n in _cleanup(job, b) if n not in p.delete]
        return _done(p, job, st, b, desired, conds)
    old_desired = old.get("desiredReplicas")
    if old_desired is not None and old_desired != desired and phase not in ("Suspended",):
        verb = "ScaledUp" if desired > old_desired else "ScaledDown"
        p.events.append(Event("Normal", verb, f"workers {old_desired} -> {desired}"))
    return _done(p, job, st, b, desired, conds)


def _why_waiting(p: Plan, job: JobView, st: dict[str, Any], b: Buckets, conds: list,
                 now: dt.datetime) -> tuple[list, tuple[str, str] | None]:
    """Waiting is never silent (waiting.py): the Waiting condition, reason and Event for
    workers that cannot start. Returns the conditions and, when failurePolicy.
    pendingTimeoutSeconds ran out, the (reason, message) to fail the job with."""
    phase = str(st.get("phase") or "")
    v = waiting.assess(conds, waiting.job_waiting(x.waiting for x in b.active), phase=phase,
                       status_reason=st.get("reason"), now=now, keep_refusal=bool(p.create),
                       timeout_s=job.pending_timeout_seconds if phase != "Running" else None)
    p.events += [Event(*e) for e in v.events]
    p.requeue(v.requeue)
    if v.reason:
        st["reason"], st["message"] = v.reason
    return v.conditions, v.fail


def _incident(st: dict[str, Any], now: dt.datetime, kind: str, cause: str | None, pod: str | None,
              exit_code: int | None, incarnation: int, message: str) -> None:
    inc = {"time": fmt_time(now), "kind": kind, "cause": cause or "none", "incarnation": incarnation, "message": message}
    if pod:
        inc["pod"] = pod
    if exit_code is not None:
        inc["exitCode"] = exit_code
    st["incidents"] = (list(st.get("incidents") or []) + [inc])[-MAX_INCIDENTS:]


def _fill_counts(job: JobView, st: dict[str, Any], b: Buckets, desired: int, creating: int = 0) -> None:
    ready = sum(1 for x in b.active if x.ready)
    # Pods this pass creates count already (like the Job controller's `active`).
    st["replicas"] = len(b.active) + len(b.succeeded) + creating
    st["readyReplicas"] = ready
    st["desiredReplicas"] = desired
    st["workers"] = f"{ready}/{desired}"
    st["selector"] = selector(job.name)
    st["observedGeneration"] = job.generation


def _done(p: Plan, job: JobView, st: dict[str, Any], b: Buckets, desired: int, conds: list) -> Plan:
    _fill_counts(job, st, b, desired, len(p.create))
    st["conditions"] = conds
    p.status = st
    p.incarnation = int(st.get("incarnation", 0))
    p.avoid_nodes = supervision.avoid_nodes(st.get("incidents"))
    # De-duplicate deletes, keep order.
    seen: set[str] = set()
    p.delete = [n for n in p.delete if not (n in seen or seen.add(n))]
    return p


__all__ = ["Buckets", "Event", "Plan", "bucket", "plan", "pod_name"]
