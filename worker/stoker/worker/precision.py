"""fp16 training with dynamic loss scaling (``parallel.fp16``), and the no-op it replaces.

The loss is multiplied by a scale before backward; the gradients are unscaled before
clipping; a step whose gradients overflowed (Inf/NaN) is skipped and the scale halved; after
``growth_interval`` clean steps it doubles (torch.amp.GradScaler). Skipped steps are counted.
The scaler's state (scale, growth tracker, skips) is part of the checkpoint, so a resumed run
scales exactly like an undisturbed one. An overflow is expected with fp16, not an anomaly:
the trainer hides that step's gradient norm from the health monitor.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.stateful import Stateful

LOSS_SCALER = "loss_scaler"  # the checkpoint key (only with parallel.fp16)


class NoScaling:
    """bf16 / fp32: nothing to scale, every step is taken."""
    enabled = False
    overflowed = False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale(self, optimizers) -> None:
        pass

    def step(self, optimizers) -> None:
        for opt in optimizers:
            opt.step()

    def metrics(self) -> dict[str, float]:
        return {}


class LossScaling(Stateful):
    enabled = True

    def __init__(self, device_type: str, init_scale: float, growth_interval: int):
        self.scaler = torch.amp.GradScaler(device_type, init_scale=init_scale, growth_interval=growth_interval)
        self.skipped = 0          # steps skipped for overflow, over the job's history
        self.overflowed = False   # the last step's

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale(self, optimizers) -> None:
        for opt in optimizers:
            self.scaler.unscale_(opt)

    def step(self, optimizers) -> None:
        before = self.scaler.get_scale()
        for opt in optimizers:
            self.scaler.step(opt)   # skipped when its gradients hold Inf/NaN
        self.scaler.update()
        self.overflowed = self.scaler.get_scale() < before
        self.skipped += int(self.overflowed)

    def metrics(self) -> dict[str, float]:
        return {"loss_scale": float(self.scaler.get_scale()), "overflow_skips": float(self.skipped)}

    def state_dict(self) -> dict[str, Any]:
        return {**self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.skipped = int(state.pop("skipped", 0))
        self.scaler.load_state_dict(state)


def loss_scaling(cfg, device_type: str) -> NoScaling | LossScaling:
    p = cfg.parallel
    return LossScaling(device_type, p.loss_scale, p.loss_scale_growth_interval) if p.fp16 else NoScaling()
