"""The exact step at which a trainer died, even of SIGKILL.

A heartbeat's step is up to one heartbeat interval old when a worker dies: at 20 steps a
second and a 1 s interval, three kills at steps 9, 10 and 15 were all reported "at step 10",
and the repeat rule ("the same failure at the same step 3 times in a row is the user's")
failed a healthy job (bench/chaos.py, seed 595289532, chaos-18). So each trainer's Session
overwrites one fixed-width record in a file of its own after every step (one ``pwrite``, no
flush needed: the page cache outlives the process), and the launcher, which outlives its
trainers, reads the failed rank's record and names the step in its exit line, where the
operator reads it from the pod's termination message (``LINE``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

_WIDTH = 20
# The launcher's exit line; podview parses the step out of the termination message and
# leaves the line out of what the trainer said (LINE_START).
LINE = "stoker launch: worker rank {rank} exited with {exitcode}; exiting {code}"
LINE_START = r"^stoker launch: worker rank \d+ exited"
STEP_SUFFIX = "; its last completed step was {step}"
STEP_RE = re.compile(LINE_START + r" with .*; its last completed step was (\d+)\s*$", re.MULTILINE)


def _path(directory: str | os.PathLike, rank: int) -> Path:
    return Path(directory) / f"rank-{int(rank)}"


DONE = "done"   # after the step: the trainer finished its training (``StepFile.finish``)


class StepFile:
    """The writer: one per trainer process."""

    def __init__(self, directory: str | os.PathLike, rank: int) -> None:
        self._fd = os.open(_path(directory, rank), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._step = -1

    def write(self, step: int) -> None:
        self._step = int(step)
        os.pwrite(self._fd, f"{self._step:<{_WIDTH}d}\n".encode(), 0)

    def finish(self) -> None:
        """The trainer is done training (it said FINISHED): an exit that crashes after this (a
        communication library's thread aborting at interpreter exit) lost no work."""
        os.pwrite(self._fd, f"{f'{self._step} {DONE}':<{_WIDTH}s}\n".encode(), 0)


def open_writer(directory: str | None, rank: int) -> StepFile | None:
    """A writer when the launcher asked for one and the folder is usable; never fails the trainer."""
    if not directory:
        return None
    try:
        return StepFile(directory, rank)
    except OSError:
        return None


def _record(directory: str | os.PathLike | None, rank: int) -> list[str]:
    if not directory:
        return []
    try:
        return _path(directory, rank).read_text().split()
    except OSError:
        return []


def read(directory: str | os.PathLike | None, rank: int) -> int | None:
    """The last step the trainer of ``rank`` completed, or None (no SDK, no step yet)."""
    words = _record(directory, rank)
    try:
        step = int(words[0]) if words else None
    except ValueError:
        return None
    return None if step is None or step < 0 else step


def finished(directory: str | os.PathLike | None, rank: int) -> bool:
    """Whether the trainer of ``rank`` said it finished training (``StepFile.finish``)."""
    return _record(directory, rank)[1:] == [DONE]


def exit_line(rank: int, exitcode: int, code: int, step: int | None) -> str:
    line = LINE.format(rank=rank, exitcode=exitcode, code=code)
    return line + (STEP_SUFFIX.format(step=step) if step is not None else "")


def step_of(message: str | None) -> int | None:
    """The step named by the launcher's exit line in a termination message (the last such line)."""
    found = STEP_RE.findall(message or "")
    return int(found[-1]) if found else None
