"""Recovery decisions: what to do about a detected failure. Pure.

Given a ``detection.Finding``, the job's restart counters and its incident
history, ``decide()`` returns one of

  * ``Restart``  -- the whole job restarts in one coordinated round: one new
    incarnation, one rendezvous, every pod replaced (never pod by pod);
  * ``Replace``  -- elastic jobs: the failed pods are replaced while the
    survivors (still >= minReplicas) keep training at a smaller world size;
    fixed-size jobs with hot spares (spec.spares): the failed pods go, the other
    workers restart in place and a spare takes each lost worker's rank (``spare``);
  * ``Fail``     -- the budget is spent; the message carries the reason and the
    last error lines.

Budgets are honest:
  * userError (crash, OOM, a failure that repeats identically) spends
    ``failurePolicy.maxRestarts``;
  * infrastructure (node lost, eviction, kill by signal, silence, hang) and
    preemption do not; infrastructure has its own, generous safety limit so a
    broken cluster cannot restart a job forever.
  * A failure with the same signature (cause, exit code, step) ``repeat_limit``
    times in a row is a user error, whatever it looked like: the "same failure
    at the same step again and again" case (e.g. a script that hangs or kills
    itself at step 7).

Replacement pods prefer other nodes than the ones that recently failed this job
(``nodes_to_avoid`` + ``with_node_anti_affinity``, a *preferred* node affinity:
avoidance never makes a job unschedulable, e.g. when every node of a small pool
failed once); ``NodeHealth`` counts failures per node across jobs so a node that
keeps failing jobs is reported and, by policy, cordoned. Only causes that are
the node's (lost, evicting) count there: a hung or silent process (SIGSTOP, a
deadlock, heartbeats stopped while its node is Ready) is not a node fault; its
node is only preferred against (it may be a node about to turn NotReady).
"""
from __future__ import annotations

import copy
import dataclasses
import re
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import detection as D
from .podview import PodView

# Causes that say something about the node the pod ran on (counted by NodeHealth: reported,
# cordoned by policy). Not Hang or HeartbeatLost: a frozen process on a Ready node is the
# process's fault; blaming its node once per hang excluded every node of a 2-node pool
# (issue 11: the job sat Pending forever).
NODE_CAUSES = frozenset({D.NODE_LOST, D.EVICTED})
# Causes whose node replacements *prefer* to avoid (a preferred affinity, never required):
# a lost node is often first seen as a hang or as silence, before its grace period ends
# and it turns NotReady (found by bench/chaos.py: without this the replacement went back
# to the dying node and the job restarted a second time).
# PeerLost: its suspect peer's node
AVOID_CAUSES = NODE_CAUSES | {D.HANG, D.COLLECTIVE_STUCK, D.HEARTBEAT_LOST, D.PEER_LOST}
AVOID_WEIGHT = 100  # preferred-affinity weight (the maximum): other nodes win whenever one fits
# Causes a repetition can turn into a user error (never external ones).
REPEATABLE = frozenset({D.WORKER_CRASHED, D.OOM_KILLED, D.WORKER_KILLED, D.HANG, D.COLLECTIVE_STUCK,
                        D.HEARTBEAT_LOST, D.PEER_LOST, D.USER_ERROR})
ERROR_LINES = 5
ERROR_CHARS = 800
# A structured log line at debug/info level is not an error (a SIGKILLed trainer's last lines
# are its checkpoint notices); the line may be cut at its start, so the level is matched as text.
_QUIET = re.compile(r'"level":\s*"(debug|info)"', re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Policy:
    max_restarts: int = 3            # spec.failurePolicy.maxRestarts (user errors)
    max_infra_restarts: int = 50     # safety valve for infrastructure restarts
    repeat_limit: int = 3            # identical failures in a row -> UserError
    elastic: bool = False
    in_place: bool = False           # trainers restart inside their pods (fixed-size jobs, inPlaceRestarts > 0)
    min_replicas: int = 1
    avoid_max: int = 3               # most recent failed nodes a replacement avoids
    replicas: int = 1                # the world (spec.replicas)
    spares: int = 0                  # spec.spares: hot spare pods (fixed-size jobs with in-place restarts)


@dataclasses.dataclass(frozen=True)
class Restart:
    finding: D.Finding
    budget: str          # userError | infrastructure | preemption
    counted: bool        # spends maxRestarts
    reason: str          # condition reason
    message: str
    avoid_nodes: tuple[str, ...] = ()
    repeated: int = 1    # how many times in a row this signature happened (incl. this one)


@dataclasses.dataclass(frozen=True)
class Replace:
    finding: D.Finding
    pods: tuple[str, ...]
    budget: str
    reason: str
    message: str
    avoid_nodes: tuple[str, ...] = ()
    spare: bool = False  # a spare takes the place (fixed-size job): the others restart in place


@dataclasses.dataclass(frozen=True)
class Fail:
    finding: D.Finding
    budget: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Pause:
    finding: D.Finding
    message: str


REASON_OF = {
    D.PREEMPTED: "WorkerPreempted", D.EVICTED: "WorkerEvicted", D.NODE_LOST: "NodeLost",
    D.OOM_KILLED: "WorkerOOMKilled", D.WORKER_KILLED: "WorkerKilled", D.WORKER_CRASHED: "WorkerFailed",
    D.HEARTBEAT_LOST: "HeartbeatLost", D.HANG: "WorkerHung", D.USER_ERROR: "RepeatedUserError",
    D.RENDEZVOUS_LOST: "RendezvousLost", D.PEER_LOST: "WorkerPeerLost", D.COLLECTIVE_STUCK: "CollectiveStuck",
}


# ---------------------------------------------------------------------------- repetition


def signature(cause: str, exit_code: int | None, step: int | None, exact: bool = True) -> tuple | None:
    """What makes two failures "the same": cause, exit code and step. None when
    the step is unknown or only a heartbeat's (up to an interval old: kills at steps 9, 10
    and 15 all read "step 10"), so nothing can be said to repeat at the same step."""
    if step is None or step < 0 or not exact:
        return None
    return (cause, exit_code, int(step))


def repeats(history: Sequence[Mapping[str, Any]], finding: D.Finding) -> int:
    """How many times in a row (this one included) the finding's signature occurred.

    ``history`` is status.incidents (oldest first); an incident's signature uses
    its ``reason``-independent detection cause (``detectedCause``, else ``cause``).
    """
    sig = signature(finding.cause, finding.exit_code, finding.step, finding.step_exact)
    if sig is None:
        return 1
    n = 1
    for inc in reversed(list(history)):
        if inc.get("kind") not in ("Restart", "Replace"):
            continue
        cause = inc.get("detectedCause")
        if cause == D.USER_ERROR:
            cause = inc.get("originalCause", cause)
        if signature(cause or "", inc.get("exitCode"), inc.get("step"), not inc.get("stepApproximate")) != sig:
            break
        n += 1
    return n


def last_error_lines(text: str, lines: int = ERROR_LINES, chars: int = ERROR_CHARS) -> str:
    tail = [ln.rstrip() for ln in (text or "").strip().splitlines() if ln.strip() and not _QUIET.search(ln)][-lines:]
    out = "\n".join(tail)
    return out[-chars:]


# ---------------------------------------------------------------------------- the decision


def decide(finding: D.Finding, restarts: Mapping[str, int], history: Sequence[Mapping[str, Any]], policy: Policy,
           *, failed_pods: Sequence[str] = (), survivors: int = 0,
           node_of: Mapping[str, str] | None = None) -> Restart | Replace | Fail | Pause:
    """What to do about ``finding``.

    ``restarts``: status.restarts counters (userError, infrastructure, preemption, total).
    ``failed_pods``/``survivors``: for elastic jobs, the pods that must go and how
    many current pods are healthy without them.
    """
    n = repeats(history, finding)
    original = finding.cause
    if finding.cause in REPEATABLE and n >= policy.repeat_limit and finding.cause != D.USER_ERROR:
        finding = dataclasses.replace(
            finding, cause=D.USER_ERROR,
            message=f"{finding.message}; the same failure ({original}) happened at step {finding.step} "
                    f"{n} times in a row")
    budget = finding.budget
    reason = REASON_OF.get(finding.cause, "WorkerFailed")
    avoid = nodes_to_avoid(history, finding, policy.avoid_max)
    errors = last_error_lines(finding.error)
    err_part = f"; last error: {errors}" if errors else ""

    if finding.cause == D.TRAINING_DIVERGED:  # a restart would meet the same divergence: say why and stop
        return Fail(finding, budget, "TrainingDiverged", f"{finding.message}{err_part}")
    if finding.cause == D.TRAINING_PAUSED:  # a person decides: hold the job until a restart request
        return Pause(finding, f"{finding.message}{err_part}")
    user_used = int(restarts.get("userError", 0))
    infra_used = int(restarts.get("infrastructure", 0))
    if budget == "userError" and user_used >= policy.max_restarts:
        why = "RepeatedUserError" if finding.cause == D.USER_ERROR else "RestartLimitExceeded"
        return Fail(finding, budget, why,
                    f"{finding.message} and the restart budget is spent: {user_used} of "
                    f"failurePolicy.maxRestarts={policy.max_restarts} used{err_part}")
    if budget == "infrastructure" and infra_used >= policy.max_infra_restarts:
        return Fail(finding, budget, "InfrastructureRestartLimitExceeded",
                    f"{finding.message} and {infra_used} infrastructure restarts already happened "
                    f"(operator limit {policy.max_infra_restarts}); check the cluster's nodes{err_part}")

    if (policy.elastic and budget != "userError" and failed_pods and survivors >= policy.min_replicas):
        return Replace(finding, tuple(failed_pods), budget, reason,
                       f"{finding.message}; replacing {', '.join(failed_pods)} while {survivors} workers continue",
                       avoid)
    if spare_covers(policy, budget, failed_pods, survivors):
        return Replace(finding, tuple(failed_pods), budget, reason,
                       f"{finding.message}; a hot spare takes the place of {', '.join(failed_pods)}: the other "
                       f"workers restart in place and all resume from the newest checkpoint (a new spare is started)",
                       avoid, spare=True)
    counted = budget == "userError"
    if counted:
        tail = f" (restart {user_used + 1} of failurePolicy.maxRestarts={policy.max_restarts})"
    else:
        tail = f" ({budget}: does not count against failurePolicy.maxRestarts)"
    return Restart(finding, budget, counted, reason, f"{finding.message}{tail}{err_part}", avoid, n)


def spare_covers(policy: Policy, budget: str, failed_pods: Sequence[str], survivors: int) -> bool:
    """A fixed-size job's spares can take the failed pods' places: the pods left (workers and spares)
    still make the world. Not for a user error (a spare would meet the same bug: restart in place)."""
    return (not policy.elastic and policy.in_place and policy.spares > 0 and budget != "userError"
            and bool(failed_pods) and survivors >= policy.replicas)


def count(restarts: Mapping[str, int], action: Restart | Replace) -> dict[str, int]:
    """status.restarts after carrying out ``action``."""
    out = {k: int(restarts.get(k, 0)) for k in ("userError", "infrastructure", "preemption")}
    out[action.budget] = out.get(action.budget, 0) + 1
    out["total"] = int(restarts.get("total", 0)) + 1
    return out


# ---------------------------------------------------------------------------- heartbeat records


def current_records(records: Iterable[Any], facts: Iterable[PodView]) -> list[Any]:
    """The heartbeat records (``RankProgress`` / worker snapshots: anything with
    ``pod_name`` and ``node_name``) that can still speak for a pod of the job.

    An elastic job keeps its incarnation when a pod is replaced, and the
    replacement has the same name; after the survivors re-rendezvous at a smaller
    world size nobody takes over the lost pod's rank either. So the lost pod's last
    record would name a pod that exists again (Pending, waiting for capacity) and
    grow older and older: heartbeat silence, held against the replacement. A
    record counts only while its pod runs on the node the record came from; the
    replacement's trainer starts records of its own. Records of pods not observed
    (gone) or without a node are left to the caller.
    """
    node_of = {p.name: p.node for p in facts if not p.deleting}
    out = []
    for r in records:
        pod, node = getattr(r, "pod_name", ""), getattr(r, "node_name", "")
        if pod and node and pod in node_of and node_of[pod] != node:
            continue
        out.append(r)
    return out


# ---------------------------------------------------------------------------- node avoidance


def nodes_to_avoid(history: Iterable[Mapping[str, Any]], finding: D.Finding | None, max_n: int = 3) -> tuple[str, ...]:
    """Most recent distinct nodes that failed this job for causes replacements avoid
    (``AVOID_CAUSES``; preferred only, see ``with_node_anti_affinity``)."""
    nodes: list[str] = []
    if finding is not None and finding.node and finding.cause in AVOID_CAUSES:
        nodes.append(finding.node)
    for inc in reversed(list(history)):
        cause = inc.get("detectedCause")
        node = inc.get("node")
        if node and cause in AVOID_CAUSES and node not in nodes:
            nodes.append(node)
    return tuple(nodes[:max_n])


def with_node_anti_affinity(pod_spec: Mapping[str, Any], nodes: Sequence[str]) -> dict[str, Any]:
    """A copy of ``pod_spec`` that the scheduler places on other nodes than ``nodes``
    whenever one fits, and still on one of ``nodes`` when none does.

    A *preferred* term (weight ``AVOID_WEIGHT``) with ``matchFields: metadata.name
    NotIn [node]`` per node (the API server accepts a single value for ``matchFields``
    In/NotIn; the expressions of a term are ANDed). A required term would make the
    job unschedulable once every node that fits it failed once (issue 11). A lost
    node is kept off by its own NoSchedule taint, not by this. Earlier avoidance
    terms are replaced; the user's required and preferred terms are kept.
    """
    spec = copy.deepcopy(dict(pod_spec))
    if not nodes:
        return spec
    exprs = [{"key": "metadata.name", "operator": "NotIn", "values": [n]} for n in sorted(set(nodes))]
    na = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    preferred = [t for t in na.get("preferredDuringSchedulingIgnoredDuringExecution") or []
                 if not _is_avoidance(t)]
    preferred.append({"weight": AVOID_WEIGHT, "preference": {"matchFields": exprs}})
    na["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return spec


def _is_avoidance(term: Mapping[str, Any]) -> bool:
    fields = (term.get("preference") or {}).get("matchFields") or []
    return bool(fields) and all(f.get("key") == "metadata.name" and f.get("operator") == "NotIn" for f in fields)


# ---------------------------------------------------------------------------- bad nodes


@dataclasses.dataclass(frozen=True)
class NodeVerdict:
    node: str
    failures: int
    report: bool      # crossed the report threshold just now (emit an Event once)
    cordon: bool      # policy says cordon it now


class NodeHealth:
    """Failures per node across jobs within a sliding window. Thread-safe enough
    for the operator (one lock); the clock is injectable for tests."""

    def __init__(self, report_after: int = 2, cordon_after: int = 0, window_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import threading

        self.report_after = report_after
        self.cordon_after = cordon_after      # 0: never cordon
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[float, str]]] = {}
        self._reported: set[str] = set()
        self._cordoned: set[str] = set()

    def failed(self, node: str, job: str) -> NodeVerdict:
        """Record that ``node`` failed ``job`` (distinct jobs and repeats both count)."""
        now = self._clock()
        with self._lock:
            ev = [e for e in self._events.get(node, []) if now - e[0] <= self.window_s]
            ev.append((now, job))
            self._events[node] = ev
            n = len(ev)
            report = n >= self.report_after and node not in self._reported
            if report:
                self._reported.add(node)
            cordon = self.cordon_after > 0 and n >= self.cordon_after and node not in self._cordoned
            if cordon:
                self._cordoned.add(node)
            return NodeVerdict(node, n, report, cordon)

    def failures(self, node: str) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for t, _ in self._events.get(node, []) if now - t <= self.window_s)


# ---------------------------------------------------------------------------- planned stops


def drain_done(acks: Mapping[int, str], world_size: int, requested_at: float, now: float,
               grace_s: float) -> tuple[bool, str]:
    """Before a planned stop: may the pods go yet? (done, why).

    Done when every rank acknowledged the checkpoint request (DONE or REJECTED)
    or the grace period ran out (then the last committed checkpoint is used).
    """
    final = {r for r, s in acks.items() if s in ("DONE", "REJECTED")}
    if world_size > 0 and all(r in final for r in range(world_size)):
        rejected = sorted(r for r, s in acks.items() if s == "REJECTED")
        return True, ("checkpoint committed on every rank" if not rejected
                      else f"ranks {rejected} could not checkpoint; the last committed checkpoint is used")
    if now - requested_at >= grace_s:
        missing = [r for r in range(world_size) if r not in final]
        return True, f"grace period {grace_s:g}s ran out waiting for ranks {missing}"
    return False, "waiting for the checkpoint"
