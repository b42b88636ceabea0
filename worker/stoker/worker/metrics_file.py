"""The trainer's metrics file: one JSON record per line, written by one rank only
(the first rank of the last pipeline stage)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO


class MetricsFile:
    def __init__(self, path: str | None, enabled: bool) -> None:
        self.path = None if path is None else Path(path)
        self.enabled = enabled and self.path is not None
        self._f: TextIO | None = None

    def emit(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            self._f = open(self.path, "a", buffering=1)  # type: ignore[arg-type]
        self._f.write(json.dumps(record, sort_keys=True) + "\n")

    def trim(self, step: int) -> None:
        """Drop records of steps after ``step`` (logged by a run that died before
        checkpointing them): they are about to be redone, the file stays one line per step."""
        if not self.enabled or not self.path.exists():  # type: ignore[union-attr]
            return
        self.close()  # the next emit reopens the rewritten file, not the replaced one
        keep = []
        for line in self.path.read_text().splitlines():  # type: ignore[union-attr]
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass  # a line torn by a kill
        tmp = self.path.with_suffix(".tmp")  # type: ignore[union-attr]
        tmp.write_text("".join(f"{line}\n" for line in keep))
        tmp.replace(self.path)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
