"""Training health: non-finite values and spikes in loss and gradient norm, and throughput
stalls, caught at the step they happen. Pure: no torch, no I/O.

Every rank feeds the same numbers (the loss is all-reduced; the gradient norm is summed over
ranks in the same all-reduce), so every rank reaches the same verdict at the same step
without another collective. Throughput is per rank (wall clock) and is only ever reported.

A spike is judged by a robust z-score against the last ``window`` healthy steps:
``(x - median) / (1.4826 * MAD)``, with the spread floored at 0.1% of the median so a
flat curve does not turn noise into alarms. Only rises count (a falling loss is not an
anomaly). Nothing is judged before ``min_history`` healthy steps, and steps found anomalous
never enter the window.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from typing import Deque

from stoker.common.ranges import format_ranges, merge_ranges, parse_ranges  # noqa: F401 (the trainer's names)

NON_FINITE = "NonFinite"
LOSS_SPIKE = "LossSpike"
GRAD_NORM_SPIKE = "GradNormSpike"
THROUGHPUT_STALL = "ThroughputStall"

IGNORE, REPORT, ROLLBACK, PAUSE, FAIL = "ignore", "report", "rollback", "pause", "fail"
ACTIONS = (IGNORE, REPORT, ROLLBACK, PAUSE, FAIL)
MAD_TO_SIGMA = 1.4826
SPREAD_FLOOR = 1e-3  # of |median|


@dataclasses.dataclass(frozen=True)
class Rules:
    """What to watch and what to do (the trainer's ``health`` config, or the CRD's spec.health)."""
    on_non_finite: str = ROLLBACK
    on_spike: str = REPORT
    loss_spike_z: float = 0.0        # 0: off
    grad_norm_spike_z: float = 0.0   # 0: off
    window: int = 50
    min_history: int = 10
    stall_fraction: float = 0.0      # report when tokens/s < fraction x window median ...
    stall_steps: int = 5             # ... for this many steps in a row; 0 fraction: off


@dataclasses.dataclass(frozen=True)
class Anomaly:
    step: int
    kind: str
    statistic: str   # how it was judged, e.g. "loss=nan" or "robust z=41.2 > 6"
    value: float
    threshold: float

    def describe(self) -> str:
        return f"{self.kind} at step {self.step} ({self.statistic})"


def robust_z(x: float, history: list[float]) -> float:
    med = statistics.median(history)
    mad = statistics.median(abs(h - med) for h in history)
    spread = max(MAD_TO_SIGMA * mad, SPREAD_FLOOR * abs(med), 1e-12)
    return (x - med) / spread


class Monitor:
    """Feed every step with ``observe``; it returns the step's anomaly, if any."""

    def __init__(self, rules: Rules):
        self.rules = rules
        self._loss: Deque[tuple[int, float]] = deque(maxlen=max(1, rules.window))
        self._norm: Deque[tuple[int, float]] = deque(maxlen=max(1, rules.window))
        self._tps: Deque[float] = deque(maxlen=max(1, rules.window))
        self._slow = 0

    def action_for(self, anomaly: Anomaly) -> str:
        if anomaly.kind == NON_FINITE:
            return self.rules.on_non_finite
        if anomaly.kind == THROUGHPUT_STALL:
            return REPORT
        return self.rules.on_spike

    def observe(self, step: int, loss: float, grad_norm: float | None,
                tokens_per_s: float | None = None) -> Anomaly | None:
        """``grad_norm`` None: not to be judged (an fp16 overflow, which loss scaling skips)."""
        found = self._non_finite(step, loss, grad_norm) or self._spike(step, loss, grad_norm)
        if found is None:
            self._loss.append((step, loss))
            if grad_norm is not None:
                self._norm.append((step, grad_norm))
            return self._stall(step, tokens_per_s)
        return found

    def forget_after(self, step: int) -> None:
        """After a rollback to ``step``: the steps after it never happened."""
        for q in (self._loss, self._norm):
            kept = [(s, v) for s, v in q if s <= step]
            q.clear()
            q.extend(kept)
        self._slow = 0

    # -- the checks
    def _non_finite(self, step: int, loss: float, grad_norm: float | None) -> Anomaly | None:
        for name, v in (("loss", loss), ("grad_norm", grad_norm)):
            if v is not None and not math.isfinite(v):
                return Anomaly(step, NON_FINITE, f"{name}={v}", v, math.inf)
        return None

    def _spike(self, step: int, loss: float, grad_norm: float | None) -> Anomaly | None:
        r = self.rules
        for name, v, z_max, hist in (("loss", loss, r.loss_spike_z, self._loss),
                                     ("grad_norm", grad_norm, r.grad_norm_spike_z, self._norm)):
            if v is None or z_max <= 0 or len(hist) < max(2, r.min_history):
                continue
            z = robust_z(v, [h for _, h in hist])
            if z > z_max:
                kind = LOSS_SPIKE if name == "loss" else GRAD_NORM_SPIKE
                return Anomaly(step, kind, f"{name}={v:.6g}, robust z={z:.1f} > {z_max:g} over {len(hist)} steps",
                               v, z_max)
        return None

    def _stall(self, step: int, tps: float | None) -> Anomaly | None:
        r = self.rules
        if r.stall_fraction <= 0 or tps is None or tps <= 0:
            return None
        if len(self._tps) >= max(2, r.min_history):
            floor = r.stall_fraction * statistics.median(self._tps)
            if tps < floor:
                self._slow += 1
                if self._slow == r.stall_steps:  # once per stall
                    return Anomaly(step, THROUGHPUT_STALL, f"tokens/s={tps:.4g} < {r.stall_fraction:g} x median "
                                   f"for {r.stall_steps} steps", tps, floor)
                return None
        self._slow = 0
        self._tps.append(tps)
        return None


def skip_window(batch_start: int, global_batch: int, batches: int) -> tuple[int, int]:
    """The global sample positions to skip: ``batches`` batches from the one that made the anomaly."""
    return batch_start, batch_start + global_batch * max(1, batches)


def parse_pauses(text: str, field: str = "debug.data_pauses") -> dict[int, float]:
    """``"7:8,20:15"`` -> {7: 8.0, 20: 15.0} (step -> seconds)."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        step, sep, secs = part.partition(":")
        try:
            out[int(step)] = float(secs)
        except ValueError:
            raise ValueError(f"{field}: {part!r} is not STEP:SECONDS (e.g. 7:8)") from None
        if not sep or int(step) < 1 or float(secs) < 0:
            raise ValueError(f"{field}: {part!r} must be STEP:SECONDS with STEP >= 1 and SECONDS >= 0")
    return out
