"""The trainer's side of training health (the judging is ``health.Monitor``): after each
step, report an anomaly, roll back to the newest committed checkpoint before it and skip
the batches that made it, or stop the job with the reason.

What a rollback leaves behind travels with the checkpoints: each commit manifest carries
``health: {rollbacks, skip}`` as of its step, and the sample ranges skipped also come from
``health.skip`` (the operator passes the ranges its incidents recorded), so a restart after
a rollback neither meets the poisoned window again nor gets its rollback budget back.
"""
from __future__ import annotations

import bisect
import logging
import math
import time
from typing import Any

from stoker.worker import health as H
from stoker.worker.checkpoint_hooks import read_manifest
from stoker.worker.config import Config

log = logging.getLogger("stoker.worker.health")

EXIT_TRAINING_DIVERGED = 87  # the operator fails the job at once (no restart would help)
EXIT_TRAINING_PAUSED = 88    # the operator holds the job without pods until a restart request
SPIKE_FACTOR = 1000.0


class TrainingDiverged(RuntimeError):
    """The job cannot train on: the message is the reason the operator shows."""


class TrainingPaused(RuntimeError):
    """spec.health says Pause: every checkpoint before the anomaly is committed, the job waits for a person."""


def rules_of(cfg: Config) -> H.Rules:
    h = cfg.health
    return H.Rules(on_non_finite=h.on_non_finite, on_spike=h.on_spike, loss_spike_z=h.loss_spike_z,
                   grad_norm_spike_z=h.grad_norm_spike_z, window=h.window, min_history=h.min_history,
                   stall_fraction=h.stall_fraction, stall_steps=h.stall_steps)


class HealthGuard:
    def __init__(self, cfg: Config, batcher: Any):
        self.cfg = cfg
        self.monitor = H.Monitor(rules_of(cfg))
        self.batcher = batcher
        self.batcher.skips = H.parse_ranges(cfg.health.skip, "health.skip")
        self.rollbacks = 0
        self._poison = H.parse_ranges(cfg.debug.poison_samples, "debug.poison_samples")
        self._poison_factor = math.nan if cfg.debug.poison_kind == "nan" else SPIKE_FACTOR
        self._pauses = H.parse_pauses(cfg.debug.data_pauses)

    # -- what checkpoints carry
    def manifest(self) -> dict[str, Any]:
        """The commit manifest's ``health`` field for a save taken now (nothing until there is something)."""
        if not self.rollbacks and not self.batcher.skips:
            return {}
        return {"health": {"rollbacks": self.rollbacks, "skip": H.format_ranges(self.batcher.skips)}}

    def adopt(self, manifest: dict[str, Any] | None) -> None:
        """After loading a checkpoint: what it carried joins what this process knows."""
        got = (manifest or {}).get("health") or {}
        self.rollbacks = max(self.rollbacks, int(got.get("rollbacks", 0)))
        loaded = H.parse_ranges(str(got.get("skip", "")), "manifest health.skip")
        self.batcher.skips = H.merge_ranges(list(self.batcher.skips) + loaded)

    # -- the test fixture: poisoned data
    def poison_factor(self) -> float | None:
        """For the batch just drawn: the factor its loss is multiplied by, or None (clean)."""
        if not self._poison:
            return None
        lo = self.batcher.last_batch_start
        hi = lo + self.batcher.global_batch
        i = bisect.bisect_right(self._poison, (lo, math.inf)) - 1
        hit = any(a < hi and lo < b for a, b in self._poison[max(0, i):i + 2])
        return self._poison_factor if hit else None

    def data_pause(self, step: int) -> None:
        """debug.data_pauses: the batch of ``step`` keeps the trainer waiting (a false-alarm drill)."""
        if self._pauses.get(step):
            log.warning("health.data_pause step=%d seconds=%g (debug.data_pauses)", step, self._pauses[step])
            time.sleep(self._pauses[step])

    # -- each step
    def check(self, trainer: Any, ckpt: Any, step: int, loss: float, norm_vote: float | None,
              tokens_per_s: float | None) -> bool:
        """Judge the step just taken and act. True: it was rolled back (do not save or report it)."""
        anomaly = self.monitor.observe(step, loss, norm_vote, tokens_per_s)
        if anomaly is None:
            return False
        action = self.monitor.action_for(anomaly)
        if action == H.IGNORE:
            return False
        log.warning("health.anomaly step=%d kind=%s statistic=%s action=%s",
                    step, anomaly.kind, anomaly.statistic, action)
        if action == H.FAIL:
            self._report(trainer, anomaly, action)
            raise TrainingDiverged(f"{anomaly.describe()}; health.on_{_knob(anomaly)}=fail")
        if action == H.PAUSE:
            self._pause(trainer, ckpt, anomaly)
        if action == H.REPORT:
            self._report(trainer, anomaly, action)
            trainer.metrics.emit({"event": "anomaly", "step": step, "kind": anomaly.kind,
                                  "statistic": anomaly.statistic})
            return False
        self._rollback(trainer, ckpt, anomaly)
        return True

    def _rollback(self, trainer: Any, ckpt: Any, anomaly: H.Anomaly) -> None:
        h, s = self.cfg.health, anomaly.step
        if self.rollbacks >= h.max_rollbacks:
            self._report(trainer, anomaly, H.FAIL)
            raise TrainingDiverged(f"{anomaly.describe()} after {self.rollbacks} rollbacks "
                                   f"(health.max_rollbacks={h.max_rollbacks}): the training keeps diverging")
        if ckpt is None:
            raise TrainingDiverged(f"{anomaly.describe()}: nothing to roll back to without checkpoints "
                                   "(set checkpoint.uri, or health.on_non_finite/on_spike: report)")
        before = _committed_before(ckpt, s)
        if not before:
            self._report(trainer, anomaly, H.FAIL)
            raise TrainingDiverged(f"{anomaly.describe()}: no committed checkpoint before step {s} to roll back to "
                                   f"(checkpoint.interval={self.cfg.checkpoint.interval}; a shorter one helps)")
        window = self._window()
        self.rollbacks += 1
        self.batcher.skips = H.merge_ranges(list(self.batcher.skips) + [window])  # a load keeps them
        trainer.session.set_phase("RESTORING")
        target = ckpt.load(trainer.checkpoint_state, step=max(before))
        trainer.adopt_manifest(read_manifest(ckpt, target))
        self.monitor.forget_after(target)
        trainer.metrics.trim(target)
        trainer.metrics.emit({"event": "rollback", "step": target, "anomaly_step": s, "kind": anomaly.kind,
                              "skip_from": window[0], "skip_to": window[1]})
        trainer.session.set_last_committed_step(target)
        trainer.session.set_phase("TRAINING")
        log.warning("health.rolled_back anomaly_step=%d to_step=%d skip=%d:%d rollbacks=%d/%d",
                    s, target, window[0], window[1], self.rollbacks, h.max_rollbacks)
        self._report(trainer, anomaly, H.ROLLBACK, rolled_back_to=target, skip_from=window[0],
                     skip_to=window[1], batches_skipped=h.skip_batches)

    def _pause(self, trainer: Any, ckpt: Any, anomaly: H.Anomaly) -> None:
        """Stop without saving the anomalous state: the save in flight (of an earlier step) commits, the
        report names the checkpoint a resume starts from and the window a rollback would skip."""
        s = anomaly.step
        if ckpt is None:
            raise TrainingDiverged(f"{anomaly.describe()}: health.on_{_knob(anomaly)}=pause needs checkpoints to "
                                   "resume from (set checkpoint.uri)")
        before, window = _committed_before(ckpt, s), self._window()
        resume = max(before) if before else 0
        self._report(trainer, anomaly, H.PAUSE, rolled_back_to=resume, skip_from=window[0], skip_to=window[1],
                     batches_skipped=0)
        raise TrainingPaused(f"{anomaly.describe()}: paused (health.on_{_knob(anomaly)}=pause); a restart resumes "
                             f"from step {resume}; to skip the batches that made it, add {window[0]}:{window[1]} "
                             "to health.skip first")

    def _window(self) -> tuple[int, int]:
        """The sample positions a rollback skips: skip_batches batches from the one just drawn."""
        return H.skip_window(self.batcher.last_batch_start, self.batcher.global_batch, self.cfg.health.skip_batches)

    def _report(self, trainer: Any, anomaly: H.Anomaly, action: str, **detail: Any) -> None:
        trainer.session.report_anomaly(step=anomaly.step, kind=anomaly.kind, statistic=anomaly.statistic,
                                       action=action, rollbacks=self.rollbacks, **detail)


def _committed_before(ckpt: Any, step: int) -> list[int]:
    """The committed checkpoint steps before ``step``, once the save in flight has ended."""
    ckpt.wait()
    return [c for c in ckpt.committed_steps() if c < step]


def _knob(anomaly: H.Anomaly) -> str:
    return "non_finite" if anomaly.kind == H.NON_FINITE else "spike"
