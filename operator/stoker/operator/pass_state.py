"""What one reconcile pass works on and what it decides. Pure.

``Pass`` carries the job, its bucketed pods, the status being computed in memory
and the ``Plan`` being filled; each step of the pass (``reconcile.STEPS``) reads
and updates it. Incidents are recorded in one place (``Pass.record``) and the
plan is closed in one place (``Pass.done``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Sequence

from . import incidents as incident_log
from . import supervision, waiting
from .jobspec import JobView
from .pods import selector
from .podview import PodView
from .status import fmt_time, set_condition


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
    workload: tuple[str, ...] | None = None  # Kueue Workload action (policy_kueue): create|resize|release|finish|delete

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


@dataclasses.dataclass
class Pass:
    """One pass: the inputs (``job``, ``b``, ``obs``, ``settings``, ``now``, the
    status as read in ``old``) and what it computes (``st``, ``conds``, ``p``)."""

    job: JobView
    now: dt.datetime
    obs: supervision.Observed
    settings: supervision.Settings
    old: dict[str, Any]
    b: Buckets
    desired: int
    st: dict[str, Any]
    conds: list[dict[str, Any]]
    phase: str | None
    incarnation: int
    restarts: dict[str, int]
    p: Plan
    drained: Any = None    # policy_failure.Decision: the restart a finished preemption drain asks for
    decision: Any = None   # policy_failure.Decision: this pass's failure decision (or an on-call restart)
    missing: list[int] = dataclasses.field(default_factory=list)   # replica indexes with no pod
    admission: Any = None  # kueue_workload.Admission: where a queued job's admission stands (OFF: no queue)

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.conds = set_condition(self.conds, type_, status, reason, message, self.now)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.p.events.append(Event(type_, reason, message))

    def has_condition(self, type_: str) -> bool:
        return any(c.get("type") == type_ for c in self.conds)

    def set_phase(self, phase: str, reason: str, message: str) -> None:
        self.st["phase"], self.st["reason"], self.st["message"] = phase, reason, message

    def record(self, inc: dict[str, Any], *, detected: bool = True) -> None:
        """The one place an incident is recorded: appended to status.incidents and,
        for a detected failure, handed to the shell (metrics, node health)."""
        self.st["incidents"] = incident_log.append(self.st.get("incidents"), inc)
        if detected:
            self.p.incident = inc

    def finish(self, phase: str, reason: str, message: str) -> None:
        """The job ends (Succeeded or Failed)."""
        self.set_phase(phase, reason, message)
        self.st["completionTime"] = fmt_time(self.now)
        self.condition(phase, True, reason, message)
        self.condition("Running", False, reason, "the job finished")
        if self.has_condition("Restarting"):
            self.condition("Restarting", False, reason, "the job finished")
        if waiting.current(self.conds):
            self.condition(waiting.CONDITION, False, reason, "the job finished")
        self.event("Normal" if phase == "Succeeded" else "Warning", reason, message)

    def delete(self, names: Sequence[str]) -> None:
        self.p.delete += [n for n in names if n not in self.p.delete]

    def cleanup(self) -> list[str]:
        """Pods to delete once the job finished (spec.runPolicy.cleanPodPolicy)."""
        b, policy = self.b, self.job.clean_pod_policy
        out = [x.name for x in b.previous if not x.deleting]
        out += [x.name for x in b.excess]
        if policy in ("Running", "All"):
            out += [x.name for x in b.active]
        if policy == "All":
            out += [x.name for x in b.succeeded + b.failed]
        return out

    def fill_counts(self, creating: int = 0) -> None:
        ready = sum(1 for x in self.b.active if x.ready)
        # Pods this pass creates count already (like the Job controller's `active`).
        self.st["replicas"] = len(self.b.active) + len(self.b.succeeded) + creating
        self.st["readyReplicas"] = ready
        self.st["desiredReplicas"] = self.desired
        self.st["workers"] = f"{ready}/{self.desired}"
        self.st["selector"] = selector(self.job.name)
        self.st["observedGeneration"] = self.job.generation

    def close(self) -> Plan:
        """A finished job's plan: counts and conditions, nothing else."""
        self.fill_counts()
        self.st["conditions"] = self.conds
        self.p.status = self.st
        return self.p

    def done(self) -> Plan:
        p = self.p
        self.fill_counts(len(p.create))
        self.st["conditions"] = self.conds
        p.status = self.st
        p.incarnation = int(self.st.get("incarnation", 0))
        p.avoid_nodes = supervision.avoid_nodes(self.st.get("incidents"))
        seen: set[str] = set()   # de-duplicate deletes, keep order
        p.delete = [n for n in p.delete if not (n in seen or seen.add(n))]  # type: ignore[func-returns-value]
        return p
