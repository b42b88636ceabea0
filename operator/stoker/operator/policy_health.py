"""spec.health: what the workers are told, and the anomalies they report. Pure.

The workers judge and act (stoker.worker.health_guard): the operator tells them the rules
through ``STOKER_HEALTH`` (with the data ranges earlier rollbacks skipped, from
status.health.skip, so a restart never meets a poisoned window again), and records each
anomaly a worker reports once: an incident of kind Anomaly, an Event, and status.health.
A job whose trainer gave up (exit 87, TrainingDiverged) is failed by ``recovery.decide``; one
whose trainer paused (exit 88, TrainingPaused) is held without pods until a restart request.

Every rank reports the same anomaly (they judge the same all-reduced numbers), so an
anomaly is known by what it is (step, kind, action, rollbacks so far), not by who sent it.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from stoker.common.ranges import format_ranges, merge_ranges, parse_ranges
from stoker.common.timefmt import fmt_time

if TYPE_CHECKING:  # pods.py imports this module, and pass_state imports pods
    from .pass_state import Pass, Plan

ACTIONS = {"Ignore": "ignore", "Report": "report", "Rollback": "rollback", "Pause": "pause", "Fail": "fail"}
# spec.health field -> the trainer's health.* field
FIELDS = (("onNonFinite", "on_non_finite"), ("onSpike", "on_spike"), ("lossSpikeZScore", "loss_spike_z"),
          ("gradNormSpikeZScore", "grad_norm_spike_z"), ("window", "window"), ("minHistory", "min_history"),
          ("throughputStallFraction", "stall_fraction"), ("skipBatches", "skip_batches"),
          ("maxRollbacks", "max_rollbacks"))
SEEN_MAX = 32   # crds/: status.health.seen maxItems


def worker_env(spec: Mapping[str, Any] | None, status: Mapping[str, Any] | None) -> str | None:
    """The ``STOKER_HEALTH`` value for the workers of the next pods (None: nothing to say)."""
    out: dict[str, Any] = {}
    for key, name in FIELDS:
        if (spec or {}).get(key) is not None:
            value = spec[key]  # type: ignore[index]
            out[name] = ACTIONS.get(value, value) if name.startswith("on_") else value
    ranges = parse_ranges(((status or {}).get("health") or {}).get("skip") or "", "status.health.skip")
    ranges += parse_ranges((spec or {}).get("skip") or "", "spec.health.skip")
    if ranges:
        out["skip"] = format_ranges(merge_ranges(ranges))
    return json.dumps(out, sort_keys=True) if out else None


def key_of(a: Mapping[str, Any]) -> str:
    return f"{a.get('step')}:{a.get('kind')}:{a.get('action')}:{a.get('rollbacks', 0)}"


def reported(workers: Iterable[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """(worker, anomaly) pairs, one per distinct anomaly, oldest step first."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for w in workers:
        for a in getattr(w, "anomalies", ()) or ():
            out.setdefault(key_of(a), (w, dict(a)))
    return sorted(out.values(), key=lambda wa: (int(wa[1].get("rollbacks", 0)), int(wa[1].get("step", 0))))


def describe(a: Mapping[str, Any], max_rollbacks: Any) -> str:
    text = f"{a.get('kind')} at step {a.get('step')} ({a.get('statistic')})"
    if a.get("action") == "rollback":
        text += (f"; rolled back to the checkpoint of step {a.get('rolled_back_to')} and skipped "
                 f"{a.get('batches_skipped')} batch(es), samples {a.get('skip_from')}:{a.get('skip_to')} "
                 f"(rollback {a.get('rollbacks')} of spec.health.maxRollbacks={max_rollbacks})")
    elif a.get("action") == "fail":
        text += "; the trainer stops the job"
    elif a.get("action") == "pause":
        text += (f"; paused: a resume starts from the checkpoint of step {a.get('rolled_back_to')}; to skip the "
                 f"batch, add {a.get('skip_from')}:{a.get('skip_to')} to spec.health.skip first")
    else:
        text += "; training goes on (spec.health says Report)"
    return text


def incident(w: Any, a: Mapping[str, Any], now, max_rollbacks: Any) -> dict[str, Any]:
    detail = {"kind": a.get("kind"), "statistic": a.get("statistic"), "action": a.get("action"),
              "rollbacks": int(a.get("rollbacks", 0))}
    if a.get("action") in ("rollback", "pause"):
        detail.update(rolledBackTo=int(a["rolled_back_to"]), batchesSkipped=int(a.get("batches_skipped", 0)),
                      skipFrom=int(a.get("skip_from", 0)), skipTo=int(a.get("skip_to", 0)))
    inc = {"time": fmt_time(now), "kind": "Anomaly", "cause": "none", "detectedCause": a.get("kind"),
           "incarnation": int(getattr(w, "incarnation", 0)), "step": int(a.get("step", 0)),
           "message": describe(a, max_rollbacks)[:2000], "anomaly": detail}
    if getattr(w, "pod_name", ""):
        inc["pod"] = w.pod_name
    return inc


def merge_skip(old: str, a: Mapping[str, Any]) -> str:
    """status.health.skip with a rollback's skipped range added."""
    ranges = parse_ranges(old or "", "status.health.skip")
    if a.get("action") == "rollback" and int(a.get("skip_to", 0)) > int(a.get("skip_from", 0)):
        ranges.append((int(a["skip_from"]), int(a["skip_to"])))
    return format_ranges(merge_ranges(ranges))


def anomalies(ps: "Pass") -> "Plan | None":
    """Record each anomaly the workers reported, once."""
    old = dict(ps.st.get("health") or {})
    seen = list(old.get("seen") or [])
    fresh = [(w, a) for w, a in reported(ps.obs.workers) if key_of(a) not in seen]
    if not fresh:
        return None
    max_rb = (ps.job.health or {}).get("maxRollbacks", 3)
    st = {**old, "anomalies": int(old.get("anomalies", 0))}
    for w, a in fresh:
        inc = incident(w, a, ps.now, max_rb)
        ps.record(inc, detected=False)
        ps.event("Warning", "TrainingRolledBack" if a.get("action") == "rollback" else "TrainingAnomaly",
                 inc["message"])
        seen.append(key_of(a))
        st["anomalies"] += 1
        st["rollbacks"] = max(int(st.get("rollbacks", 0)), int(a.get("rollbacks", 0)))
        st["lastStep"] = int(a.get("step", 0))
        st["skip"] = merge_skip(st.get("skip", ""), a)
        # True for as long as the job lives: it met an anomaly (the message is the latest)
        ps.condition("TrainingAnomaly", True, str(a.get("kind") or "Anomaly"), inc["message"])
    if not st.get("skip"):
        st.pop("skip", None)
    st["seen"] = seen[-SEEN_MAX:]
    ps.st["health"] = st
    return None
