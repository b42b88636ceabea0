"""One reconcile pass as a pure function: (job, observed pods, now) -> Plan.

The shape follows kubernetes-sigs/jobset: stop if deleting or finished → sort the
owned pods into buckets → failure policy → success policy → create what is
missing → suspend/resume → status computed in memory. The shell (controller.py)
executes the plan: pod deletes/creates, then ONE status write, then Events.

``plan`` reads as the list of its steps (``STEPS``); each is a named function in
the module of the spec field it implements and returns the finished ``Plan`` when
the pass ends there, else None.

Safety when the operator dies at any line: a whole-job restart is first only
*written* (status.incarnation += 1); the next pass deletes the previous
incarnation's pods and creates the new ones under deterministic names, so every
step can be repeated and nothing is created twice.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Mapping, Sequence

from . import drain, on_call, policy_deadline, policy_failure, policy_success, policy_suspend, policy_ttl
from . import incidents, node_exclusion, policy_health, policy_inplace, policy_kueue, policy_pending, replicas
from . import supervision
from .jobspec import JobView
from .kueue_workload import admission as kueue_admission
from .pass_state import Buckets, Event, Pass, Plan, bucket
from .pods import pod_name
from .podview import PodView
from .status import restarts_of


def created(ps: Pass) -> Plan | None:
    """The first pass records the job as created."""
    if not ps.has_condition("Created"):
        ps.condition("Created", True, "JobCreated", f"TrainingJob {ps.job.name} accepted")
        ps.event("Normal", "JobCreated", f"TrainingJob {ps.job.name} accepted")
        ps.st["phase"] = ps.phase = ps.phase or "Created"
        ps.st.setdefault("incarnation", 0)
        ps.st.setdefault("restarts", ps.restarts)
    return None


def progress(ps: Pass) -> Plan | None:
    """Heartbeat-derived status: last checkpoint, metrics, a recovered incident."""
    ps.st.update(supervision.progress(ps.st, ps.obs, incarnation=ps.incarnation,
                                      checkpoint_uri=(ps.job.checkpoint or {}).get("uri"), now=ps.now))
    return None


def peer_lost_node(ps: Pass) -> Plan | None:
    """A PeerLost whose suspect's node turned out lost is recorded as NodeLost."""
    confirmed = incidents.confirm_peer_lost(ps.st.get("incidents"), ps.obs.nodes, ps.obs.nodes_listed, ps.now)
    if confirmed is not None:
        ps.st["incidents"] = confirmed
    return None


STEPS: tuple[Callable[[Pass], Plan | None], ...] = (
    created,
    progress,
    peer_lost_node,
    policy_health.anomalies,      # spec.health: what the workers caught, recorded once each
    policy_kueue.admission,       # scheduling.queueName: keep the Kueue Workload in step with the job
    policy_ttl.finished,          # finished: cleanPodPolicy, ttlSecondsAfterFinished
    policy_deadline.deadline,     # activeDeadlineSeconds
    drain.drain,                  # planned stops checkpoint first
    policy_suspend.suspend,       # suspend / resume
    policy_kueue.queued,          # no workers until Kueue admits the job; an eviction re-queues it
    replicas.delete_previous,     # previous incarnations, scaled-away workers
    node_exclusion.recreate_healed,  # a pod kept off a node found lost that is healthy again
    policy_failure.failure,       # fail / replace
    policy_inplace.restarted,     # trainers restarted inside their pods (launchers' reports)
    on_call.requests,             # stoker restart / stoker checkpoint
    policy_failure.restart,       # a whole-job restart (failure, request, changed template)
    policy_success.success,
    replicas.create,
    replicas.phase,
    policy_pending.pending,       # failurePolicy.pendingTimeoutSeconds; the Waiting condition
    replicas.scale_events,
)


def begin(job: JobView, pods: Sequence[PodView], now: dt.datetime, obs: supervision.Observed | None,
          settings: supervision.Settings | None, workload: Mapping[str, Any] | None = None) -> Pass:
    old = dict(job.status)
    incarnation = int(old.get("incarnation", 0))
    adm = kueue_admission(job, workload)
    # A queued job runs the workers Kueue admitted (all of spec.replicas and spec.spares, docs/kueue.md), none
    # while held.
    desired = 0 if job.suspend or adm.held else min(job.pods, adm.count) if adm.state == "admitted" else job.pods
    return Pass(job=job, now=now, obs=obs or supervision.Observed(facts=tuple(pods)),
                settings=settings or supervision.Settings(), old=old, b=bucket(job, pods, incarnation, desired),
                desired=desired, st=dict(old), conds=list(old.get("conditions") or []), phase=old.get("phase"),
                incarnation=incarnation, restarts=restarts_of(old), p=Plan(incarnation=incarnation), admission=adm)


def plan(job: JobView, pods: Sequence[PodView], now: dt.datetime, obs: supervision.Observed | None = None,
         settings: supervision.Settings | None = None, workload: Mapping[str, Any] | None = None) -> Plan:
    """`obs`: raw pod facts, nodes and heartbeats (the shell's observations);
    without it the pass decides from the pod views alone. `workload`: a queued job's Kueue
    Workload as read by the shell (None: none yet)."""
    if job.deleting:
        return Plan(incarnation=int(job.status.get("incarnation", 0)))
    ps = begin(job, pods, now, obs, settings, workload)
    for step in STEPS:
        done = step(ps)
        if done is not None:
            return done
    return ps.done()


__all__ = ["Buckets", "Event", "Plan", "STEPS", "bucket", "plan", "pod_name"]
