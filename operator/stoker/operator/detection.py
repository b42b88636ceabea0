"""Failure detection: what went wrong with a job, named as one cause. Pure.

Inputs are plain facts the shell gathers each pass:

  * ``PodView``    -- one worker pod (phase, exit code, signal, reason, node, times; podview.py),
  * ``NodeView``   -- the node a pod runs on (Ready condition, unreachable taint, gone),
  * ``RankProgress`` -- per rank, what the heartbeat stream told us (last message,
    last step and when it last advanced, recent step times), kept by
    ``heartbeats.ProgressTracker``.

``detect()`` returns at most one ``Finding`` -- the root cause -- or None: one of the
causes below, each with its budget in ``BUDGET_OF`` (the evidence for each is the table
in docs/recovery.md).

A failure that repeats with the same signature (cause, exit code, step) is
re-labelled ``UserError`` by recovery.py: that is the "same failure at the same
step again and again" case, whatever it looked like the first time.

Which cause wins when several show up in one pass: pod-level evidence is more
specific than heartbeat silence, and among failed pods the one that finished
first is the root (the others usually died in the collective after it); a PeerLost
pod (a broken collective, peer_errors.py) is the root only when no other pod shows why.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import signal as _signal
from typing import Any, Iterable, Mapping, Sequence

from stoker.common.timefmt import parse_time

from .peer_errors import peer_transport_error, with_suspect
from .podview import PodView

# ---------------------------------------------------------------------------- causes
PREEMPTED = "Preempted"
EVICTED = "Evicted"
NODE_LOST = "NodeLost"
OOM_KILLED = "OOMKilled"
WORKER_KILLED = "WorkerKilled"
WORKER_CRASHED = "WorkerCrashed"
HEARTBEAT_LOST = "HeartbeatLost"
HANG = "Hang"
COLLECTIVE_STUCK = "CollectiveStuck"  # every rank alive, beating and waiting in a collective (heartbeat_checks)
RENDEZVOUS_LOST = "RendezvousLost"  # the launcher lost the operator's rendezvous store (exit 86)
PEER_LOST = "PeerLost"  # a collective with another rank broke (that rank's failure is the root, if seen)
USER_ERROR = "UserError"  # assigned by recovery.py for repeated identical failures
TRAINING_DIVERGED = "TrainingDiverged"  # the trainer gave up: spec.health's budget spent, or its action Fail (exit 87)
TRAINING_PAUSED = "TrainingPaused"  # spec.health's action Pause: held until a restart request (exit 88)

BUDGET_OF = {
    PREEMPTED: "preemption",
    EVICTED: "infrastructure",
    NODE_LOST: "infrastructure",
    OOM_KILLED: "userError",
    WORKER_KILLED: "infrastructure",
    WORKER_CRASHED: "userError",
    HEARTBEAT_LOST: "infrastructure",
    HANG: "infrastructure",
    COLLECTIVE_STUCK: "infrastructure",
    RENDEZVOUS_LOST: "infrastructure",
    PEER_LOST: "infrastructure",
    USER_ERROR: "userError",
    TRAINING_DIVERGED: "userError",
    TRAINING_PAUSED: "none",
}
# Lower wins when two pods finished at the same time.
_PRIORITY = {PREEMPTED: 0, NODE_LOST: 1, EVICTED: 2, OOM_KILLED: 3, WORKER_KILLED: 4, TRAINING_DIVERGED: 5,
             TRAINING_PAUSED: 5, WORKER_CRASHED: 5, HEARTBEAT_LOST: 6, HANG: 7, COLLECTIVE_STUCK: 7,
             RENDEZVOUS_LOST: 8, PEER_LOST: 9}

PREEMPTION_REASONS = frozenset({"PreemptionByScheduler", "PreemptionByKubeScheduler", "Preempted", "Preempting"})
EVICTION_REASONS = frozenset({"Evicted", "EvictionByEvictionAPI", "DeletionByTaintManager", "TerminationByKubelet",
                              "DeletionByPodGC", "NodeShutdown", "Shutdown", "Terminated", "UnexpectedAdmissionError"})
NODE_LOST_REASONS = frozenset({"NodeLost"})
EXIT_RENDEZVOUS_LOST = 86  # stoker.operator.launch
EXIT_TRAINING_DIVERGED = 87  # stoker.worker.health_guard
EXIT_TRAINING_PAUSED = 88  # stoker.worker.health_guard
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


# ---------------------------------------------------------------------------- facts

@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    ready: str = "True"              # True | False | Unknown
    unreachable: bool = False        # node.kubernetes.io/unreachable or not-ready taint
    unschedulable: bool = False
    since: dt.datetime | None = None  # when Ready last changed
    last_heartbeat: dt.datetime | None = None
    address: str | None = None       # InternalIP, and the kubelet's port: what node_probe.py dials
    kubelet_port: int | None = None

    @property
    def lost(self) -> bool:
        return self.ready != "True" or self.unreachable


@dataclasses.dataclass(frozen=True)
class RankProgress:
    """What the heartbeat stream says about one rank (monotonic seconds)."""

    rank: int
    incarnation: int
    step: int
    last_seen: float                 # last message
    advanced_at: float               # last time `step` grew (or the first message)
    pod_name: str = ""
    node_name: str = ""
    phase: str = "TRAINING"
    connected: bool = True
    error: str = ""
    step_times: tuple[float, ...] = ()   # recent step durations, seconds
    checkpoint_s: float | None = None    # last checkpoint duration
    activity: str = ""                   # what the trainer is doing: data | compute | collective | checkpoint
    activity_since: float | None = None  # since when (monotonic, this process's clock)
    started_at: float = 0.0              # when this rank's process was first heard from (its stream)


@dataclasses.dataclass(frozen=True)
class Finding:
    cause: str
    message: str
    pod: str | None = None
    rank: int | None = None
    node: str | None = None
    exit_code: int | None = None
    step: int | None = None
    onset: dt.datetime | None = None     # best estimate of when the failure began
    error: str = ""                      # last error lines (termination message / heartbeat error)
    settle_s: float = 0.0                # > 0: other evidence may still come; look again this much later
    step_exact: bool = True              # False: ``step`` is a heartbeat's, up to an interval old

    @property
    def budget(self) -> str:
        return BUDGET_OF.get(self.cause, "infrastructure")


# ---------------------------------------------------------------------------- parsing

def node_view(node: Mapping) -> NodeView:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    ready, since, beat = "Unknown", None, None
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            ready = str(c.get("status") or "Unknown")
            since = parse_time(c.get("lastTransitionTime"))
            beat = parse_time(c.get("lastHeartbeatTime"))
    taints = {t.get("key") for t in spec.get("taints") or []}
    status = node.get("status") or {}
    ips = [a.get("address") for a in status.get("addresses") or [] if a.get("type") == "InternalIP"]
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    return NodeView(name=meta.get("name", ""), ready=ready,
                    unreachable=bool(taints & {UNREACHABLE_TAINT, NOT_READY_TAINT}),
                    unschedulable=bool(spec.get("unschedulable")), since=since, last_heartbeat=beat,
                    address=ips[0] if ips else None, kubelet_port=int(port) if port else None)


def signal_of(exit_code: int | None) -> int | None:
    """128+N exit codes are 'killed by signal N' (shell convention, and the launcher's)."""
    if exit_code is not None and 128 < exit_code < 128 + 65:
        return exit_code - 128
    return None


def _signal_name(n: int) -> str:
    try:
        return _signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


# ---------------------------------------------------------------------------- pods and nodes

def classify_pod(pod: PodView, node: NodeView | None, node_known: bool = True) -> Finding | None:
    """The cause for one pod, or None if it is healthy (or succeeded).

    ``node`` is the pod's node; None with ``node_known`` means the Node object is gone.
    """
    reasons = {pod.reason, pod.disruption or ""}
    base = dict(pod=pod.name, node=pod.node, exit_code=pod.exit_code, error=pod.message, step=pod.last_step)
    if reasons & PREEMPTION_REASONS:
        return Finding(PREEMPTED, f"worker pod {pod.name} was preempted ({pod.disruption or pod.reason})",
                       onset=pod.finished_at, **base)
    node_gone = pod.node is not None and node is None and node_known
    node_bad = node is not None and node.lost
    if not pod.terminated or pod.exit_code is None:
        if (node_gone or node_bad) and pod.phase != "Succeeded":
            why = "was deleted" if node_gone else (
                "is unreachable" if node and node.unreachable else f"is NotReady (Ready={node.ready})")
            return Finding(NODE_LOST, f"node {pod.node} of worker pod {pod.name} {why}",
                           onset=(node.last_heartbeat or node.since) if node else None, **base)
    if reasons & NODE_LOST_REASONS:
        return Finding(NODE_LOST, f"worker pod {pod.name} lost its node {pod.node} ({pod.reason})",
                       onset=pod.finished_at, **base)
    if reasons & EVICTION_REASONS or (pod.disruption and pod.phase == "Failed"):
        return Finding(EVICTED, f"worker pod {pod.name} was evicted ({pod.disruption or pod.reason})",
                       onset=pod.finished_at, **base)
    if pod.phase != "Failed":
        return None
    if pod.exit_code is None:
        return Finding(NODE_LOST if (node_gone or node_bad) else WORKER_KILLED,
                       f"worker pod {pod.name} failed without an exit code ({pod.reason or 'no reason'})",
                       onset=pod.finished_at, **base)
    if pod.reason == "OOMKilled":
        return Finding(OOM_KILLED, f"worker pod {pod.name} ran out of memory (OOMKilled, exit code {pod.exit_code})",
                       onset=pod.finished_at, **base)
    if pod.exit_code == EXIT_RENDEZVOUS_LOST:
        return Finding(RENDEZVOUS_LOST, f"worker pod {pod.name} lost the rendezvous store (exit code "
                       f"{pod.exit_code}; the operator restarted?)", onset=pod.finished_at, **base)
    if pod.exit_code == EXIT_TRAINING_DIVERGED:
        return Finding(TRAINING_DIVERGED, f"worker pod {pod.name}: training diverged", onset=pod.finished_at, **base)
    if pod.exit_code == EXIT_TRAINING_PAUSED:
        return Finding(TRAINING_PAUSED, f"worker pod {pod.name}: training paused by spec.health",
                       onset=pod.finished_at, **base)
    sig = signal_of(pod.exit_code)
    if sig is not None:
        return Finding(WORKER_KILLED, f"worker pod {pod.name} was killed by {_signal_name(sig)} "
                       f"(exit code {pod.exit_code})", onset=pod.finished_at, **base)
    broke = peer_transport_error(pod.message)
    if broke:
        return Finding(PEER_LOST, f"worker pod {pod.name} failed with exit code {pod.exit_code} as a collective "
                       f"with another rank broke ({broke}): a peer died or the network failed",
                       onset=pod.finished_at, **base)
    return Finding(WORKER_CRASHED, f"worker pod {pod.name} failed with exit code {pod.exit_code}",
                   onset=pod.finished_at, **base)


def force_delete(pods: Iterable[PodView], nodes: Mapping[str, NodeView]) -> list[str]:
    """Pods stuck Terminating on a lost (or deleted) node: the kubelet will never
    confirm their deletion, so they must be removed with grace period 0."""
    out = []
    for p in pods:
        if not p.deleting or not p.node:
            continue
        n = nodes.get(p.node)
        if n is None or n.lost:
            out.append(p.name)
    return out


# ---------------------------------------------------------------------------- heartbeats

@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Detection timeouts (seconds). ``progress_s`` None means "derive it"."""
    heartbeat_s: float = 60.0      # a rank silent this long is dead or partitioned
    progress_s: float | None = None  # explicit spec.failurePolicy.progressTimeoutSeconds
    startup_s: float = 600.0       # allowance for the first step of an incarnation (restore, compile)
    floor_s: float = 30.0          # derived timeouts are never shorter
    factor: float = 10.0           # derived = factor x the slowest recent step
    ceiling_s: float = 3600.0      # ... and never longer
    interval_s: float = 1.0        # the workers' heartbeat interval
    frozen_beats: float = 3.0      # a rank silent this many intervals while others beat is frozen
    checkpoint_s: float = 300.0    # a rank blocked in a save (storage retries) may hold the step this long
    collective_s: float = 6.0      # every rank waiting in a collective this long (and 2x the slowest step) is stuck
    relaunch_lag_s: float = 30.0   # in-place restart: a rank not back this long after a peer's new trainer spoke


# ---------------------------------------------------------------------------- the root cause

def detect(pods: Sequence[PodView], nodes: Mapping[str, NodeView], ranks: Sequence[RankProgress],
           t: Timeouts, now_mono: float, now_wall: dt.datetime, *, incarnation: int,
           nodes_listed: bool = True, expect_heartbeats: bool = False,
           in_place_restarts: bool = False, newest_heard: float | None = None,
           lost_nodes: frozenset[str] = frozenset(), together: bool = False,
           launchers: Sequence[Any] = (), spares: int = 0) -> Finding | None:
    """The root cause of a failure in the current ``incarnation``, or None if healthy.

    ``nodes`` maps node name -> view; with ``nodes_listed`` a node missing from
    it is deleted (otherwise unknown, and not held against the pod).
    ``in_place_restarts``: torchrun restarts trainers inside their pods (elastic jobs, in-place restarts);
    ``together``: and all of them in one round (a fixed-size job's in-place restart).
    ``launchers``: the pods' launchers' keepalives (``LauncherBeat``), for the frozen-launcher rule and
    to tell a NotReady node whose pods still beat (``still_beating``: not lost) from a lost one.
    ``spares``: spec.spares: that many pods may wait without a trainer (never heard from).
    ``newest_heard``: the operator's newest heartbeat from any job (heartbeat clock), for the frozen rule.
    ``lost_nodes``: nodes whose every rank went quiet and whose kubelet does not answer (the shell's
    probe, node_probe.py): a node lost before its NotReady; it outranks the peers' broken collectives.
    """
    current = [p for p in pods if p.incarnation == incarnation]
    mine = [r for r in ranks if r.incarnation == incarnation]
    gone = node_lost(mine, lost_nodes, now_mono, now_wall) if lost_nodes else None
    findings = []
    for p in current:
        if p.phase == "Succeeded":
            continue
        f = classify_pod(p, nodes.get(p.node) if p.node else None, node_known=nodes_listed)
        if f is not None and f.cause == NODE_LOST and not p.terminated and p.node in nodes \
                and still_beating(p.name, mine, launchers, t, newest_heard):
            continue   # NotReady, yet the pod still beats: the control plane lost the kubelet, the job lost nothing
        if f is not None:
            findings.append(f)
    if findings and not (gone and all(f.cause == PEER_LOST for f in findings)):
        far = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        # A broken collective is the echo of a peer's failure: any other cause is the root.
        findings.sort(key=lambda f: (f.cause == PEER_LOST, f.onset or far, _PRIORITY.get(f.cause, 99), f.pod or ""))
        root = _with_rank(findings[0], ranks)
        return with_suspect(root, current, ranks, now_wall) if root.cause == PEER_LOST else root
    if gone is not None:
        return gone
    if any(p.phase == "Succeeded" for p in current):
        return None  # finishing: some ranks stop heartbeating on purpose
    if expect_heartbeats:
        f = never_heard(current, mine, t, now_wall, spares)
        if f is not None:
            return f
    f = check_heartbeats(mine, t, now_mono, now_wall, newest_heard=newest_heard,
                         relaunching=relaunching(mine, current) if in_place_restarts else frozenset(),
                         together=together)
    if f is None:
        return frozen_launcher(launchers, current, mine, t, now_mono, now_wall, newest_heard)
    return _with_error(f, ranks)


def relaunching(ranks: Sequence[RankProgress], pods: Sequence[PodView]) -> frozenset[int]:
    """Ranks whose stream ended while their pod runs on, on the node the rank spoke from: the
    trainer exited and torchrun starts it again (an elastic membership change; the new
    trainer imports torch and the user's modules before its first message)."""
    running = {(p.name, p.node) for p in pods if p.phase == "Running" and not p.deleting}
    return frozenset(r.rank for r in ranks if not r.connected and (r.pod_name, r.node_name or None) in running)


def _with_rank(f: Finding, ranks: Sequence[RankProgress]) -> Finding:
    """Fill rank/step/error of a pod finding from the heartbeat of that pod."""
    mine = [r for r in ranks if f.pod and r.pod_name == f.pod]
    if not mine:
        return f
    r = min(mine, key=lambda r: r.rank)
    return dataclasses.replace(f, rank=r.rank if f.rank is None else f.rank,
                               step=r.step if f.step is None else f.step,
                               step_exact=f.step_exact and f.step is not None,
                               error=f.error or r.error)


def _with_error(f: Finding, ranks: Sequence[RankProgress]) -> Finding:
    errs = [r.error for r in ranks if r.error]
    return dataclasses.replace(f, error=f.error or (errs[0] if errs else ""))


from .heartbeat_checks import (check_heartbeats, frozen_launcher, never_heard, node_lost,  # noqa: E402 (use the above)
                               progress_timeout, still_beating)
