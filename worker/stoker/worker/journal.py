"""An append-only step journal: the witness a test or a drill reads to say which steps
were computed, by which process, and where each process resumed.

With ``STOKER_STEP_JOURNAL_DIR`` set, every worker process's ``Session`` opens a file
of its own in that folder (``O_CREAT | O_EXCL | O_APPEND``: a new name per process,
never truncated, never reopened) and appends one JSON line per report:

    {"event": "step", "step": 12, "t": ...}          every session.step()
    {"event": "resumed", "step": 10, "t": ...}       set_last_committed_step() after a restore
    {"event": "checkpoint", "step": 15, "ok": true, "t": ...}   every save outcome
    {"event": "committed", "step": 15, "t": ...}     the coordinator, as COMMITTED is stored
    {"event": "resumed_from_memory", "step": 12, ...} a restore from the in-memory tier (not S3)

Each line is one ``os.write`` on an O_APPEND descriptor, so it is in the file as soon
as the call returns, even if the process is SIGKILLed right after. The trainer's own
metrics file is trimmed back to the resume step on restart (one line per step for
users); this journal is what keeps the history, so "no step computed twice" and
"recomputed steps <= steps since the last commit" can be asserted from it. The file
name carries the incarnation, pod, rank and pid; every line carries them too, and, once the
built-in trainer has named it (``Session.journal_world``), the ``world``: rank 0's pod and pid,
the same on every rank of the processes that train together (a restart in place keeps the
incarnation and changes the world).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class StepJournal:
    def __init__(self, directory: str | os.PathLike, *, job: str, incarnation: int, pod: str, rank: int) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.identity = {"job": job, "incarnation": int(incarnation), "pod": pod, "rank": int(rank),
                         "pid": os.getpid()}
        name = _SAFE.sub("_", f"{job}-inc{incarnation}-{pod}-rank{rank}-pid{os.getpid()}-{time.time_ns()}.jsonl")
        self.path = Path(directory) / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)

    def record(self, event: str, step: int, **extra: Any) -> None:
        line = json.dumps({"event": event, "step": int(step), "t": time.time(), **self.identity, **extra})
        try:
            os.write(self._fd, (line + "\n").encode())
        except OSError:
            pass  # a full disk must not stop training

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def writer(record: dict[str, Any]) -> tuple[str, int]:
    """The process that wrote ``record``: its pod and pid (pids repeat across containers)."""
    return record.get("pod", ""), record["pid"]


def read(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of every process in ``directory``, ordered by time (torn lines skipped)."""
    out = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return sorted(out, key=lambda r: r["t"])


def processes(records: list[dict[str, Any]]) -> Iterator[tuple[tuple, list[dict[str, Any]]]]:
    """Records grouped by process (incarnation, pod, rank, pid), in order of first record."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["incarnation"], r["pod"], r["rank"], r["pid"]), []).append(r)
    yield from sorted(groups.items(), key=lambda kv: kv[1][0]["t"])
