"""What the trainer reports, with times: the GPU check has no operator, so it hands
the trainer this in place of ``stoker.worker.sdk.Session`` (the same methods) and
reads step times, phases and checkpoint results from it afterwards."""
from __future__ import annotations

import time
from typing import Any


class RecordingSession:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.phases: list[tuple[str, float]] = []
        self.saves: list[dict[str, Any]] = []
        self.resumed_step: int | None = None
        self.anomalies: list[dict[str, Any]] = []

    # the Session interface the trainer uses
    def start(self) -> "RecordingSession":
        return self

    def close(self, timeout: float = 3.0) -> None:
        pass

    def step(self, step: int, **metrics: float) -> None:
        self.steps.append({"step": step, "t": time.monotonic(), **metrics})

    def set_phase(self, phase: str, error: str = "", reason: str = "") -> None:
        self.phases.append((phase, time.monotonic()))

    def set_last_committed_step(self, step: int | None) -> None:
        self.resumed_step = step

    def report_checkpoint(self, result: Any) -> None:  # on the checkpoint thread for async saves
        self.saves.append({**result.as_dict(), "reported_at": time.monotonic()})

    def journal_commit(self, step: int) -> None:
        pass

    def journal_resume_from_memory(self, step: int) -> None:
        pass

    def journal_world(self, world: str) -> None:
        pass

    def checkpoint_requested(self) -> bool:
        return False

    def stop_requested(self) -> bool:
        return False

    def set_activity(self, name: str) -> None:
        pass

    def report_anomaly(self, **anomaly: Any) -> None:
        self.anomalies.append(anomaly)

    # what the GPU check reads back
    def blocked_spans(self) -> list[tuple[float, float]]:
        """(start, end) of every CHECKPOINTING phase: the time ``Trainer.save`` held the loop."""
        spans, start = [], None
        for phase, t in self.phases:
            if phase == "CHECKPOINTING":
                start = t
            elif start is not None:
                spans.append((start, t))
                start = None
        return spans

    def save_report(self) -> list[dict[str, Any]]:
        """Per committed save: the manager's numbers, how long the loop was held, and how
        many training steps finished after the loop resumed and before the save committed."""
        spans = self.blocked_spans()
        out = []
        for i, save in enumerate(self.saves):
            span = spans[i] if i < len(spans) else None
            row = {k: save[k] for k in ("step", "ok", "duration_s", "blocked_s", "bytes", "error")}
            if span is not None:
                row["loop_blocked_s"] = span[1] - span[0]
                row["steps_during_save"] = sum(1 for s in self.steps if span[1] <= s["t"] <= save["reported_at"])
                row["commit_after_resume_s"] = save["reported_at"] - span[1]
            out.append(row)
        return out
