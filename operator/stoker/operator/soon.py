"""Delayed calls on a bounded pool: ``Soon(workers).call_later(delay, fn)``.

The controller's ``trigger_soon`` folds a burst of pod events into one pass a moment later. It
used to start a ``threading.Timer`` (a thread) per job and run the pass on it, so a burst over
500 jobs ran 500 passes at once on 500 threads (bench_operator_scale.py: most of the operator's
peak memory, and every pass slower). Here one thread keeps the due times and hands due calls to
a fixed pool.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

log = logging.getLogger("stoker.operator")


class Soon:
    def __init__(self, workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pass")
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cv:
            heapq.heappush(self._heap, (self.clock() + max(0.0, delay), next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="soon", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > self.clock():
                    self._cv.wait(None if not self._heap else self._heap[0][0] - self.clock())
                _, _, fn = heapq.heappop(self._heap)
            self._pool.submit(self._run, fn)

    @staticmethod
    def _run(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - the caller logs its own failures; the resync timer retries
            log.debug("delayed call failed", exc_info=True)
