"""The undisturbed reference runs of bench/chaos.py: one torchrun --standalone run per
(config, steps, world size), computed in a background thread from the start of the suite
(while the cluster comes up and the first jobs train, at nice 19: they take mostly the
CPU the jobs under test leave idle) and cached on disk under ~/.cache/stoker/chaos-refs
by a hash of the config, the world size, torch's version and every source file the
trainer imports (worker/ and common/), so a run of unchanged code reuses them and a
changed file recomputes them. A job's check waits for its reference."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
NICE = ("nice", "-n", "19")   # the references take only the CPU the jobs under test leave idle
CACHE = Path(os.environ.get("STOKER_CHAOS_REF_CACHE", Path.home() / ".cache" / "stoker" / "chaos-refs"))


def source_hash() -> str:
    """sha256 over the trainer's source files (paths and bytes), tracked or not."""
    h = hashlib.sha256()
    for top in ("worker/stoker", "common/stoker"):
        for f in sorted((ROOT / top).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cache_key(cfg: dict, nproc: int, src: str) -> str:
    import torch

    blob = json.dumps({"cfg": {k: v for k, v in cfg.items() if k != "debug"}, "nproc": nproc,
                       "torch": torch.__version__, "src": src}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class References:
    """``want(key, cfg)`` queues a reference run (one at a time, in the order asked);
    ``checksum(key)`` waits for it. ``run(tmp, cfg, nproc)`` is the run itself
    (tests.recovery_tests.conftest.reference_run); each sample says whether it came from
    the disk cache and how long it took."""

    def __init__(self, run: Callable[[Path, dict, int], Path], tmp: Path, nproc: int = 2,
                 cache: Path | None = CACHE) -> None:
        self.run, self.tmp, self.nproc, self.cache = run, tmp, nproc, cache
        self.src = source_hash()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-ref")
        self.futures: dict[str, Future] = {}
        self.samples: list[dict] = []
        self._lock = threading.Lock()

    def want(self, key: str, cfg: dict) -> None:
        with self._lock:
            if key not in self.futures:
                self.futures[key] = self.pool.submit(self._one, key, cfg)

    def checksum(self, key: str, cfg: dict) -> str:
        self.want(key, cfg)
        return self.futures[key].result()

    def _one(self, key: str, cfg: dict) -> str:
        t = time.time()
        path = self.cache / f"{cache_key(cfg, self.nproc, self.src)}.json" if self.cache else None
        if path and path.exists():
            summary, cached = json.loads(path.read_text()), True
        else:
            out = self.run(self.tmp / f"ref-{key}", cfg, self.nproc)
            summary, cached = json.loads((out / "summary.json").read_text()), False
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(summary))
        self.samples.append({"ref": key, "cached": cached, "seconds": time.time() - t, "t": t,
                             "checksum": summary.get("checksum"), "step": summary.get("step")})
        return summary["checksum"]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
