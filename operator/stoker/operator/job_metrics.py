"""Per-job Prometheus metrics for on-call, computed at scrape time.

The reconcile pass hands each job's freshly computed status (and the heartbeat
source, anything with ``workers(namespace, name)``) to :func:`observe`; a job that
is gone is dropped with :func:`forget`, so the label sets stay bounded by the
jobs that exist. :class:`JobMetricsCollector` keeps only the latest facts per job
and yields the metric families when Prometheus scrapes; goodput and the step
rate are computed against the clock at that moment. Times are exported as Unix
timestamps (``*_timestamp_seconds``), never as ages: an age is stale the moment it
is scraped, a timestamp is right until the next event (alerts use ``time() - ts``).

The job label is ``trainingjob``, not ``job``: Prometheus sets ``job`` on every
series to the scrape job and would rename ours to ``exported_job``.

Pure parts (unit-tested without a registry): :func:`facts_from_status`,
:func:`goodput_ratio`, :func:`step_rate`, :func:`recovered_incidents`,
:func:`job_samples`. Definitions: docs/metrics.md.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .detection import parse_time

JOB_LABEL = "trainingjob"                               # never "job": Prometheus owns that label
PHASES = ("Created", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
RESTART_CAUSES = ("userError", "infrastructure", "preemption")
RECOVERY_KINDS = ("Restart", "Replace")                 # incidents that stop training
RATE_WINDOW_S = 60.0                                    # steps/s: progress over the last minute
log = logging.getLogger("stoker.operator")

RECOVERY_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800)

Sample = tuple[str, dict[str, str], float]              # (family, labels, value)


class WorkerSource(Protocol):
    def workers(self, namespace: str, job_name: str) -> Sequence[Any]: ...


def _parse(s: Any) -> float | None:
    """RFC 3339 (``...Z``) -> epoch seconds; None for missing or malformed values."""
    t = parse_time(s) if isinstance(s, str) else None
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# status.metrics field -> gauge (the training picture; exported while status has them)
TRAINING_GAUGES = {
    "loss": "stoker_job_loss", "gradNorm": "stoker_job_grad_norm", "learningRate": "stoker_job_learning_rate",
    "valLoss": "stoker_job_validation_loss", "dataWaitFraction": "stoker_job_data_wait_ratio",
    "collectiveWaitFraction": "stoker_job_collective_wait_ratio", "gpuUtilization": "stoker_job_gpu_utilization_ratio",
    "gpuMemoryBytes": "stoker_job_gpu_memory_bytes"}


@dataclasses.dataclass(frozen=True)
class JobFacts:
    """What one job's status (and its workers' heartbeats) says, frozen at observe time.
    Times are epoch seconds (wall clock)."""

    phase: str = ""
    incarnation: int = 0
    ready: int = 0
    desired: int = 0
    step: int | None = None
    tokens_per_second: float | None = None
    checkpoint_step: int | None = None
    checkpoint_time: float | None = None
    checkpoint_duration_s: float | None = None
    checkpoint_bytes: float | None = None
    start_time: float | None = None
    end_time: float | None = None                  # completionTime of a finished job
    incidents: tuple[Mapping[str, Any], ...] = ()
    heartbeats: tuple[tuple[int, float], ...] = ()  # (rank, last heartbeat time) from status
    restarts: tuple[tuple[str, int], ...] = ()      # (cause, whole-job restarts) from status.restarts
    training: tuple[tuple[str, float], ...] = ()    # (status.metrics field, value): loss, gradNorm, ...
    anomalies: int = 0                               # status.health: training anomalies, rollbacks taken
    rollbacks: int = 0


def current_workers(workers: Iterable[Any], incarnation: int) -> list[Any]:
    """Heartbeat snapshots of the job's current incarnation."""
    return [w for w in workers or () if int(getattr(w, "incarnation", 0)) == incarnation]


def facts_from_status(status: Mapping[str, Any], workers: Iterable[Any] = ()) -> JobFacts:
    """The facts the metrics need from ``status`` (the TrainingJob's status as the
    operator just wrote it) and the heartbeat snapshots (``WorkerStatus``-like)."""
    incarnation = int(status.get("incarnation") or 0)
    m = status.get("metrics") or {}
    lc = status.get("lastCheckpoint") or {}
    cur = current_workers(workers, incarnation)
    duration = nbytes = None
    if lc.get("step") is not None:
        # the ranks' own report of that save: every rank waits for the commit (duration: the
        # slowest), the bytes are the whole checkpoint's (the coordinator's count, broadcast)
        same = [w.metrics for w in cur if (w.metrics or {}).get("checkpoint_step") == lc["step"]
                and (w.metrics or {}).get("checkpoint_ok") is not False]
        durs = [d for d in (_num(x.get("checkpoint_duration_seconds")) for x in same) if d is not None]
        sizes = [b for b in (_num(x.get("checkpoint_bytes")) for x in same) if b is not None]
        duration = max(durs) if durs else None
        nbytes = max(sizes) if sizes else None
    beats = []
    for b in status.get("workerHeartbeats") or []:
        t = _parse(b.get("lastHeartbeatTime"))
        if t is not None and b.get("rank") is not None and b.get("phase") != "FINISHED":
            beats.append((int(b["rank"]), t))
    return JobFacts(
        phase=str(status.get("phase") or ""),
        incarnation=incarnation,
        ready=int(status.get("readyReplicas") or 0),
        desired=int(status.get("desiredReplicas") or 0),
        step=int(m["step"]) if _num(m.get("step")) is not None else None,
        tokens_per_second=_num(m.get("tokensPerSecond")),
        checkpoint_step=int(lc["step"]) if _num(lc.get("step")) is not None else None,
        checkpoint_time=_parse(lc.get("time")),
        checkpoint_duration_s=duration,
        checkpoint_bytes=nbytes,
        start_time=_parse(status.get("startTime")),
        end_time=_parse(status.get("completionTime")),
        incidents=tuple(dict(i) for i in status.get("incidents") or ()),
        heartbeats=tuple(sorted(beats)),
        restarts=tuple((c, int((status.get("restarts") or {}).get(c) or 0)) for c in RESTART_CAUSES),
        training=tuple((k, float(m[k])) for k in TRAINING_GAUGES if _num(m.get(k)) is not None),
        anomalies=int((status.get("health") or {}).get("anomalies") or 0),
        rollbacks=int((status.get("health") or {}).get("rollbacks") or 0),
    )


def downtime_s(incidents: Iterable[Mapping[str, Any]], since: float, now: float) -> float:
    """Seconds training stood still because of failures since ``since``: for every
    Restart/Replace incident detected at or after ``since``, its detection latency
    (estimated onset -> detection) plus its time to recover (detection -> the first
    completed step of the new incarnation); an incident still open counts up to ``now``."""
    total = 0.0
    for inc in incidents:
        if inc.get("kind") not in RECOVERY_KINDS:
            continue
        detected = _parse(inc.get("time"))
        if detected is None or detected < since:
            continue
        total += _num(inc.get("detectionLatencySeconds")) or 0.0
        ttr = _num(inc.get("timeToRecoverSeconds"))
        total += ttr if ttr is not None else max(0.0, now - detected)
    return total


def goodput_ratio(facts: JobFacts, now: float) -> float | None:
    """1 - downtime / wall time, wall time = startTime -> (completionTime or now).
    None before the job started (no startTime) or in its first second."""
    if facts.start_time is None:
        return None
    end = facts.end_time if facts.end_time is not None else now
    wall = end - facts.start_time
    if wall <= 0:
        return None
    lost = downtime_s(facts.incidents, facts.start_time, end)
    return min(1.0, max(0.0, 1.0 - lost / wall))


def step_rate(history: Sequence[tuple[float, int]], now: float, window_s: float = RATE_WINDOW_S) -> float | None:
    """Steps per second over the last ``window_s`` from (time, step) observations
    (oldest first, one incarnation's progress): (newest step - anchor step) / (now -
    anchor time), the anchor being the newest observation older than the window (the
    oldest one if none is). Falls towards 0 while the job stands still. None with
    fewer than two observations."""
    if len(history) < 2:
        return None
    # anchor: the newest observation older than the window (else the oldest one)
    before = [(t, s) for t, s in history if now - t > window_s]
    t0, s0 = before[-1] if before else history[0]
    if now <= t0:
        return None
    return max(0.0, (max(s for _, s in history) - s0) / (now - t0))


def incident_key(inc: Mapping[str, Any]) -> str:
    """An incident's identity: not its detectedCause, which a later pass may correct
    (PeerLost to NodeLost, incidents.confirm_peer_lost)."""
    return f"{inc.get('time')}|{inc.get('kind')}|{inc.get('pod')}|{inc.get('incarnation')}"


def recovered_incidents(incidents: Iterable[Mapping[str, Any]], seen: Iterable[str],
                        not_before: float) -> list[tuple[str, str, float]]:
    """(key, detectedCause, timeToRecoverSeconds) of the incidents to observe now:
    recovered, not observed yet by this process, and recovered at or after
    ``not_before`` (this process's start: an older recovery was counted by the
    operator process that recorded it)."""
    done = set(seen)
    out = []
    for inc in incidents:
        ttr = _num(inc.get("timeToRecoverSeconds"))
        if ttr is None or inc.get("kind") not in RECOVERY_KINDS:
            continue
        key = incident_key(inc)
        recovered = _parse(inc.get("recoveredAt"))
        if key in done or recovered is None or recovered < not_before:
            continue
        out.append((key, str(inc.get("detectedCause") or "unknown"), ttr))
    return out


def job_samples(namespace: str, job: str, facts: JobFacts, now: float, *,
                live_heartbeats: Sequence[tuple[int, float]] | None = None,
                steps_per_second: float | None = None) -> list[Sample]:
    """The per-job samples at ``now``. ``live_heartbeats``: (rank, last heartbeat
    time) straight from the heartbeat registry, fresher than status' copy."""
    lab = {"namespace": namespace, JOB_LABEL: job}
    out: list[Sample] = [("stoker_job_phase", {**lab, "phase": p}, float(facts.phase == p)) for p in PHASES]
    out += [
        ("stoker_job_workers", {**lab, "state": "ready"}, float(facts.ready)),
        ("stoker_job_workers", {**lab, "state": "desired"}, float(facts.desired)),
    ]
    out += [("stoker_trainingjob_restarts", {**lab, "cause": c}, float(n)) for c, n in facts.restarts]
    out += [("stoker_job_health_anomalies", lab, float(facts.anomalies)),
            ("stoker_job_health_rollbacks", lab, float(facts.rollbacks))]
    running = facts.phase == "Running"
    if running:
        beats = live_heartbeats if live_heartbeats is not None else facts.heartbeats
        for rank, seen in sorted(beats):
            out.append(("stoker_worker_last_heartbeat_timestamp_seconds", {**lab, "rank": str(rank)}, seen))
    if facts.step is not None:
        out.append(("stoker_job_step", lab, float(facts.step)))
    if running and steps_per_second is not None:
        out.append(("stoker_job_steps_per_second", lab, steps_per_second))
    if running and facts.tokens_per_second is not None:
        out.append(("stoker_job_tokens_per_second", lab, facts.tokens_per_second))
    out += [(TRAINING_GAUGES[k], lab, v) for k, v in facts.training]
    if facts.checkpoint_step is not None:
        out.append(("stoker_checkpoint_step", lab, float(facts.checkpoint_step)))
        if facts.checkpoint_time is not None:
            out.append(("stoker_checkpoint_timestamp_seconds", lab, facts.checkpoint_time))
        if facts.checkpoint_duration_s is not None:
            out.append(("stoker_checkpoint_duration_seconds", lab, facts.checkpoint_duration_s))
        if facts.checkpoint_bytes is not None:
            out.append(("stoker_checkpoint_bytes", lab, facts.checkpoint_bytes))
    g = goodput_ratio(facts, now)
    if g is not None:
        out.append(("stoker_job_goodput_ratio", lab, g))
    return out


_J = ("namespace", JOB_LABEL)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "stoker_job_phase": ("1 for the TrainingJob's current phase, 0 for the others", (*_J, "phase")),
    "stoker_job_workers": ("Workers of a TrainingJob: ready pods and desired replicas", (*_J, "state")),
    "stoker_trainingjob_restarts": ("Whole-job restarts of a TrainingJob so far, by cause (status.restarts)",
                                    (*_J, "cause")),
    "stoker_job_loss": ("Training loss of the lead rank's last step (status.metrics.loss)", _J),
    "stoker_job_grad_norm": ("Global gradient norm of the last step, before clipping (status.metrics.gradNorm)", _J),
    "stoker_job_learning_rate": ("Learning rate of the last step (status.metrics.learningRate)", _J),
    "stoker_job_validation_loss": ("Latest validation loss (status.metrics.valLoss)", _J),
    "stoker_job_data_wait_ratio": ("Share of the last step spent waiting for data (status.metrics.dataWaitFraction)",
                                   _J),
    "stoker_job_collective_wait_ratio": ("Share of the last step waited in collectives (docs/metrics.md)", _J),
    "stoker_job_gpu_utilization_ratio": ("Lead rank's GPU utilisation, 0-1 (status.metrics.gpuUtilization)", _J),
    "stoker_job_gpu_memory_bytes": ("Peak GPU memory allocated by the lead rank (status.metrics.gpuMemoryBytes)", _J),
    "stoker_job_health_anomalies": ("Training anomalies (NaN/Inf, spikes, stalls) the job's workers reported "
                                    "(status.health, docs/health.md)", _J),
    "stoker_job_health_rollbacks": ("Rollbacks the job's workers took for anomalies (status.health.rollbacks)", _J),
    "stoker_worker_last_heartbeat_timestamp_seconds": ("Unix time of the last heartbeat of each rank of a "
                                                       "running job", (*_J, "rank")),
    "stoker_job_step": ("Newest training step the job's workers reported", _J),
    "stoker_job_steps_per_second": (f"Training steps per second over the last {RATE_WINDOW_S:g} s (running jobs)", _J),
    "stoker_job_tokens_per_second": ("Tokens per second the lead rank reported for its last step (running jobs)", _J),
    "stoker_checkpoint_timestamp_seconds": ("Unix time the newest committed checkpoint was first seen", _J),
    "stoker_checkpoint_step": ("Step of the newest committed checkpoint", _J),
    "stoker_checkpoint_duration_seconds": ("Duration of the newest committed checkpoint (slowest rank)", _J),
    "stoker_checkpoint_bytes": ("Size of the newest committed checkpoint", _J),
    "stoker_job_goodput_ratio": ("1 - failure downtime / wall time since the job started (docs/metrics.md)", _J),
}
COUNTERS = {"stoker_trainingjob_restarts", "stoker_job_health_anomalies", "stoker_job_health_rollbacks"}   # monotonic per job: exported as *_total


@dataclasses.dataclass
class _Entry:
    facts: JobFacts
    source: WorkerSource | None
    history: collections.deque          # (time, step) of the current incarnation
    seen: set[str]                      # incident keys already observed in the histogram


class JobMetricsCollector(Collector):
    """Latest facts per job (thread-safe) -> metric families at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.time, started_at: float | None = None) -> None:
        self._clock = clock
        self._started_at = clock() if started_at is None else started_at
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Entry] = {}
        self.recovery = Histogram("stoker_recovery_seconds",
                                  "Failure detection to the first completed step after it, by detected cause",
                                  ["cause"], buckets=RECOVERY_BUCKETS, registry=None)

    def observe(self, namespace: str, name: str, status: Mapping[str, Any],
                source: WorkerSource | None = None) -> None:
        workers = _workers(source, namespace, name)
        facts = facts_from_status(status, workers)
        now = self._clock()
        with self._lock:
            e = self._jobs.get((namespace, name))
            if e is None:
                e = self._jobs[(namespace, name)] = _Entry(facts, source, collections.deque(maxlen=64), set())
            elif e.facts.incarnation != facts.incarnation:
                e.history.clear()
            e.facts, e.source = facts, source
            self._note_step(e, now, _max_step(workers, facts))
            fresh = recovered_incidents(facts.incidents, e.seen, self._started_at)
            e.seen = {k for k in e.seen if k in {incident_key(i) for i in facts.incidents}}
            e.seen.update(k for k, _, _ in fresh)
        for _, cause, ttr in fresh:
            self.recovery.labels(cause).observe(ttr)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._jobs.pop((namespace, name), None)

    @staticmethod
    def _note_step(e: _Entry, now: float, step: int | None) -> None:
        if step is None:
            return
        if e.history and step < e.history[-1][1]:
            e.history.clear()   # resumed from an older checkpoint: a new run of progress
        e.history.append((now, step))

    def collect(self) -> Iterator[Any]:
        now = self._clock()
        with self._lock:
            jobs = [(key, e, e.facts, e.source) for key, e in self._jobs.items()]
        fams = {name: (CounterMetricFamily if name in COUNTERS else GaugeMetricFamily)(name, doc, labels=list(labels))
                for name, (doc, labels) in FAMILIES.items()}
        for (ns, name), e, facts, source in jobs:
            live = None
            workers: list[Any] = []
            if source is not None and facts.phase == "Running":  # outside the lock: the registry has its own
                workers = current_workers(_workers(source, ns, name), facts.incarnation)
                live = [(int(w.rank), float(w.last_seen)) for w in workers
                        if getattr(w, "phase", "") != "FINISHED" and getattr(w, "last_seen", 0)]
            with self._lock:
                if workers and e.facts is facts:  # not overtaken by a pass meanwhile
                    self._note_step(e, now, _max_step(workers, facts))
                history = list(e.history)
            rate = step_rate(history, now)
            for fam, labels, value in job_samples(ns, name, facts, now, live_heartbeats=live or None,
                                                  steps_per_second=rate):
                fams[fam].add_metric([labels[k] for k in FAMILIES[fam][1]], value)
        yield from fams.values()
        yield from self.recovery.collect()


def _workers(source: WorkerSource | None, namespace: str, name: str) -> list[Any]:
    if source is None:
        return []
    try:
        return list(source.workers(namespace, name))
    except Exception:  # noqa: BLE001 - a scrape must not fail because the heartbeat side did
        return []


def _max_step(workers: Sequence[Any], facts: JobFacts) -> int | None:
    steps = [int(w.step) for w in current_workers(workers, facts.incarnation) if int(getattr(w, "step", -1)) >= 0]
    if steps:
        return max(steps)
    return facts.step


COLLECTOR = JobMetricsCollector()


def observe(namespace: str, name: str, status: Mapping[str, Any], source: WorkerSource | None = None) -> None:
    """Record a job's status after a reconcile pass (cheap; never raises)."""
    try:
        COLLECTOR.observe(namespace, name, status, source)
    except Exception:  # noqa: BLE001 - metrics must never break a reconcile pass
        log.exception("job metrics: observe failed", extra={"namespace": namespace, "job": name})


def forget(namespace: str, name: str) -> None:
    COLLECTOR.forget(namespace, name)


__all__ = ["COLLECTOR", "JobFacts", "JobMetricsCollector", "facts_from_status", "forget", "goodput_ratio",
           "job_samples", "observe", "recovered_incidents", "step_rate"]
