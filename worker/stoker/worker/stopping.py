"""Ending training before ``train.steps``: a token budget (``train.max_tokens``) and early
stopping on a validation plateau (``validation.patience``, ``validation.min_delta``). Pure.

Both judge numbers every rank has (tokens seen; the all-reduced validation loss), so every
rank stops at the same step. The plateau's state (best loss, its step, validations without
improvement) travels in each commit manifest, so a resumed run stops where an undisturbed
one would. The reason starts with a CamelCase word the operator uses as the Succeeded reason.
"""
from __future__ import annotations

import dataclasses
from typing import Any

TOKEN_BUDGET = "TokenBudgetReached"
PLATEAU = "EarlyStopped"


@dataclasses.dataclass
class Stopper:
    max_tokens: int | None = None
    patience: int = 0          # validations without an improvement > min_delta; 0: off
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad: int = 0

    def after_step(self, step: int, tokens_seen: int, val_loss: float | None) -> str | None:
        """The reason to stop after ``step``, or None."""
        if val_loss is not None and self.patience:
            if self.best is None or val_loss < self.best - self.min_delta:
                self.best, self.best_step, self.bad = val_loss, step, 0
            else:
                self.bad += 1
                if self.bad >= self.patience:
                    return (f"{PLATEAU}: validation loss did not improve by more than {self.min_delta:g} in "
                            f"{self.bad} validations (best {self.best:.6g} at step {self.best_step}; "
                            f"validation.patience={self.patience})")
        if self.max_tokens and tokens_seen >= self.max_tokens:
            return f"{TOKEN_BUDGET}: trained on {tokens_seen} tokens (train.max_tokens={self.max_tokens})"
        return None

    def manifest(self) -> dict[str, Any]:
        if not self.patience or self.best is None:
            return {}
        return {"early_stopping": {"best": self.best, "best_step": self.best_step, "bad": self.bad}}

    def adopt(self, manifest: dict[str, Any] | None) -> None:
        """After loading a checkpoint (a resume or a rollback): its state, the validations after it undone."""
        got = (manifest or {}).get("early_stopping")
        self.best, self.best_step, self.bad = None, None, 0
        if got:
            self.best, self.best_step, self.bad = float(got["best"]), int(got["best_step"]), int(got["bad"])
