"""What the built-in trainer calls on its session: ``stoker.worker.sdk.Session`` in a
job, a stand-in in tests and in the GPU check. One list, checked when the trainer is
built, so a stand-in that lacks a method fails there with its name, not mid-run."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TrainerSession(Protocol):
    def start(self) -> "TrainerSession": ...
    def close(self) -> None: ...
    def step(self, step: int, **metrics: float) -> None: ...
    def set_phase(self, phase: str, error: str = "") -> None: ...
    def set_last_committed_step(self, step: int | None) -> None: ...
    def report_checkpoint(self, result: Any) -> None: ...
    def journal_commit(self, step: int) -> None: ...
    def checkpoint_requested(self) -> bool: ...
    def stop_requested(self) -> bool: ...


METHODS = tuple(sorted(n for n in TrainerSession.__dict__ if not n.startswith("_")))


def check_session(session: object) -> TrainerSession:
    """``session`` itself, or TypeError naming the methods it lacks."""
    missing = [m for m in METHODS if not callable(getattr(session, m, None))]
    if missing:
        raise TypeError(f"{type(session).__name__} is not a trainer session: it lacks {', '.join(missing)} "
                        f"(see stoker.worker.session_api.TrainerSession)")
    return session  # type: ignore[return-value]
