"""What the shell observed, operator-wide settings, and the status fields that come
from heartbeats rather than from a failure. Pure.

The shell (controller.py / recovery_shell.py) gathers ``Observed`` -- the raw pod
facts, the nodes under them, and what the heartbeat service knows per rank -- and
the pure reconcile pass calls:

  * ``progress()`` -> status updates that do not need a failure:
    ``lastCheckpoint``, ``metrics``, and closing the open incident once the job
    trains again (time to recover);
  * ``avoid_nodes()`` -> the nodes new pods must not land on;
  * ``to_force_delete()`` -> pods stuck Terminating on lost nodes.

The failure decision itself is ``policy_failure.decide``; planned stops are ``drain``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from stoker.common.timefmt import fmt_time, parse_time

from . import detection as D
from . import incidents as I
from . import recovery as R
from .podview import PodView


@dataclasses.dataclass(frozen=True)
class Observed:
    facts: tuple[PodView, ...] = ()
    nodes: Mapping[str, D.NodeView] = dataclasses.field(default_factory=dict)
    nodes_listed: bool = False          # False: a missing node is unknown, not deleted
    ranks: tuple[D.RankProgress, ...] = ()
    workers: tuple[Any, ...] = ()       # heartbeat snapshots (metrics, world_size, step)
    mono_now: float = 0.0               # the heartbeat clock's "now"
    heartbeats: bool = False            # the heartbeat service runs: silence/hang checks apply
    newest_heard: float | None = None   # the newest heartbeat from any job (heartbeat clock)
    lost_nodes: frozenset[str] = frozenset()  # every rank on them quiet, their kubelet silent (node_probe.py)
    reports: tuple[Any, ...] = ()       # launchers' reports of trainers restarted in place (LauncherReport)
    launchers: tuple[Any, ...] = ()     # launchers' keepalives (LauncherBeat), for the frozen-launcher rule
    held_lost: frozenset[str] = frozenset()  # nodes the shell holds lost while still Ready (node_exclusion.py)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Operator-wide knobs (STOKER_OPERATOR_*), next to the per-job spec."""

    max_infra_restarts: int = 50
    repeat_limit: int = 3
    startup_timeout_s: float = 600.0
    avoid_max: int = 3
    heartbeat_interval_s: float = 1.0
    drain_grace_s: float = 120.0         # how long a planned stop waits for the workers' checkpoint
    # The operator deletes its own pods with this grace period (SIGKILL after it): they are
    # either done already (after a drain) or being thrown away (a failed incarnation), and
    # the launcher must not hold them for a drain nobody asked for.
    delete_grace_s: int = 3
    # An outside deletion (preemption, eviction, `kubectl delete`) starts a drain only when
    # this much of its grace period is left, and the drain ends this long before the kill.
    preemption_min_grace_s: float = 10.0
    preemption_margin_s: float = 5.0
    # An in-place restart that has not trained again this long after it was detected is given
    # up: the job restarts as a new incarnation (policy_inplace).
    in_place_deadline_s: float = 120.0

    def policy(self, job: Any) -> R.Policy:
        return R.Policy(max_restarts=job.max_restarts, max_infra_restarts=self.max_infra_restarts,
                        repeat_limit=self.repeat_limit, elastic=job.elastic, min_replicas=job.min_replicas,
                        in_place=not job.elastic and job.in_place_restarts > 0,
                        avoid_max=self.avoid_max, replicas=job.replicas, spares=job.hot_spares)

    def timeouts(self, job: Any) -> D.Timeouts:
        return dataclasses.replace(
            timeouts(job.heartbeat_timeout_seconds, getattr(job, "progress_timeout_seconds", None),
                     getattr(job, "startup_timeout_seconds", None) or self.startup_timeout_s),
            interval_s=self.heartbeat_interval_s)


def timeouts(heartbeat_s: float, progress_s: float | None, startup_s: float | None = None) -> D.Timeouts:
    base = D.Timeouts()
    return dataclasses.replace(base, heartbeat_s=float(heartbeat_s),
                               progress_s=float(progress_s) if progress_s else None,
                               startup_s=float(startup_s) if startup_s else base.startup_s)


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
        if _finite(m.get("loss")):  # a NaN would make the status patch invalid JSON
            metrics["loss"] = round(float(m["loss"]), 6)
        if _finite(m.get("tokens_per_second")):
            metrics["tokensPerSecond"] = round(float(m["tokens_per_second"]), 3)
        metrics.update(training_metrics(m))
        old = dict(status.get("metrics") or {})
        if {k: v for k, v in old.items() if k != "updateTime"} != metrics:
            metrics["updateTime"] = fmt_time(now)
            out["metrics"] = metrics
        beats = [_beat(w, now, obs.mono_now) for w in sorted(current, key=lambda w: w.rank)]
        if beats != status.get("workerHeartbeats"):
            out["workerHeartbeats"] = beats
    # Recovered: a rank of this incarnation was seen completing a step (the
    # tracker records a step time only for an advance it observed) after the
    # incident -- for a Replace the survivors' step times from before it do not count.
    # A rank that already FINISHED counts too (short runs can finish between two heartbeats).
    # After an in-place restart only a restarted process counts (its stream began after the failure):
    # a peer still in the old world may finish the step it was in just after the kill.
    since, restarted_after = _incident_mono(status.get("incidents"), now, obs.mono_now)
    def trains(r: D.RankProgress) -> bool:
        if r.incarnation != incarnation or r.step < 0:
            return False
        if r.phase == "FINISHED":
            return True
        restarted = restarted_after is None or restarted_after < r.started_at < r.advanced_at
        return bool(r.step_times) and (since is None or r.advanced_at > since) and restarted
    training = any(trains(r) for r in obs.ranks)
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
        # Not "training continues": the save may have failed because a peer died (a restart follows).
        f = D.Finding(CHECKPOINT_FAILED, f"the checkpoint of step {step} did not commit (rank {w.rank}); the newest "
                      f"committed checkpoint is still step {last if last is not None else 'none'}, where a restart "
                      "would resume",
                      pod=w.pod_name or None, rank=int(w.rank), node=w.node_name or None, step=step)
        items = I.append(items, I.record(f, kind=CHECKPOINT_FAILED, budget="none", incarnation=incarnation, now=now))
        out["incidents"] = items
    return out


CHECKPOINT_FAILED = "CheckpointFailed"
# status.metrics field <- the lead rank's heartbeat metric (the built-in trainer sends them all; SDK scripts may)
TRAINING_METRICS = (("gradNorm", "grad_norm"), ("learningRate", "learning_rate"), ("valLoss", "val_loss"),
                    ("gpuMemoryBytes", "memory_bytes"))
# status.metrics field <- a heartbeat metric in seconds, as a share of the step (step_time_seconds)
STEP_SHARES = (("dataWaitFraction", "data_wait_seconds"), ("collectiveWaitFraction", "collective_seconds"))


def training_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    """The compact training picture for status.metrics (what `stoker top` and the metrics show)."""
    out = {key: float(f"{float(m[name]):.6g}") for key, name in TRAINING_METRICS if _finite(m.get(name))}
    step = m.get("step_time_seconds")
    for key, name in STEP_SHARES:
        if _finite(m.get(name)) and _finite(step) and step > 0:
            out[key] = round(min(1.0, max(0.0, float(m[name]) / float(step))), 4)
    if _finite(m.get("gpu_utilization")):
        out["gpuUtilization"] = round(min(1.0, max(0.0, float(m["gpu_utilization"]) / 100.0)), 4)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _incident_mono(incidents: Sequence[Mapping[str, Any]] | None, now: dt.datetime,
                   mono_now: float) -> tuple[float | None, float | None]:
    """(the open incident's detection time on the heartbeat (monotonic) clock, and for an in-place
    restart its onset: a rank's process must have started after it); Nones when there is none or
    the clock is unknown."""
    i = I.open_incident(incidents)
    if i is None or not mono_now:
        return None, None
    inc = list(incidents or [])[i]
    t = parse_time(inc.get("time"))
    if t is None:
        return None, None
    at = mono_now - (now - t).total_seconds()
    if not inc.get("inPlace"):
        return at, None
    return at, at - float(inc.get("detectionLatencySeconds") or 0.0)


def _beat(w: Any, now: dt.datetime, mono_now: float) -> dict[str, Any]:
    """One rank's heartbeat for status.workerHeartbeats (what `stoker describe` shows)."""
    age = max(0.0, mono_now - getattr(w, "last_seen_monotonic", mono_now)) if mono_now else 0.0
    seen = now - dt.timedelta(seconds=age)
    return {"rank": int(w.rank), "pod": w.pod_name, "node": w.node_name, "step": int(w.step), "phase": w.phase,
            "lastHeartbeatTime": fmt_time(seen)}


def avoid_nodes(incidents: Sequence[Mapping[str, Any]] | None, max_n: int = 3) -> tuple[str, ...]:
    return R.nodes_to_avoid(list(incidents or []), None, max_n)


def to_force_delete(obs: Observed) -> list[str]:
    if not obs.nodes_listed:
        return []
    return D.force_delete(obs.facts, obs.nodes)
