"""Background shard downloads with priorities: what a read needs now (fetched in the
reader's own thread if no worker has started it yet), then what the next step needs
(``prefetch``), then the rest of the split (cache fill). ``fetch_now`` (default ``fetch``)
is what a read that waits runs, in its own thread or in a worker that claimed the shard first;
workers run it for next-step shards too. ``fill_ready`` (default: always) says whether the
cache fill may start: a fill shard is not claimed before, so a read that needs it meanwhile
fetches it itself instead of waiting behind a download process that is still starting (the
cold cache's first step waited ~250 ms for the two shards the fill had handed to fetchd)."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .index import Shard

NOW, NEXT, FILL = 0, 1, 2
_STOP = -1
# Shards one read fetches at once (``get_many``): with the global shuffle a cold cache's first
# batch needs a shard per sample (16 of 57 on the demo); one after another they took ~0.6 s.
URGENT_THREADS = 8
FILL_RECHECK_S = 0.02


class Fetcher:
    def __init__(self, fetch: Callable[[Shard], Path], threads: int,
                 fetch_now: Callable[[Shard], Path] | None = None, fill_ready: Callable[[], bool] | None = None):
        self._fetch = fetch
        self._fetch_now = fetch_now or fetch
        self._fill_ready = fill_ready or (lambda: True)
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._futures: dict[str, Future] = {}
        self._started: set[str] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"stoker-shards-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def want(self, shard: Shard, priority: int) -> Future:
        """The shard's download, queued at ``priority`` unless a worker has it already."""
        with self._lock:
            fut = self._futures.get(shard.sha256)
            if fut is None or (fut.done() and fut.exception() is not None):  # new, or retry a failure
                fut = self._futures[shard.sha256] = Future()
                self._started.discard(shard.sha256)
            if shard.sha256 not in self._started and self._threads:
                self._queue.put((priority, next(self._seq), shard))
        return fut

    def get(self, shard: Shard) -> Path:
        """The shard's cached path: fetched here unless a worker is already on it."""
        fut = self.want(shard, NOW)
        if self._claim(shard):
            self._run(shard, fut, self._fetch_now)
        return fut.result()

    def get_many(self, shards: list[Shard]) -> list[Path]:
        """``get`` for several shards, the ones no worker has started fetched side by side."""
        futures, mine = [], []
        for shard in shards:
            fut = self.want(shard, NOW)
            futures.append(fut)
            if self._claim(shard):
                mine.append((shard, fut))
        if len(mine) == 1:
            self._run(*mine[0], self._fetch_now)
        elif mine:
            with ThreadPoolExecutor(min(URGENT_THREADS, len(mine)), thread_name_prefix="stoker-shards-now") as pool:
                for shard, fut in mine:
                    pool.submit(self._run, shard, fut, self._fetch_now)
        return [fut.result() for fut in futures]

    def wait(self) -> None:
        """Until every download asked for so far is done (raises the first error)."""
        with self._lock:
            futures = list(self._futures.values())
        for fut in futures:
            fut.result()

    def close(self) -> None:
        """Workers finish the download in hand; queued ones are dropped."""
        for _ in self._threads:
            self._queue.put((_STOP, next(self._seq), None))
        for t in self._threads:
            t.join()
        self._threads = []

    def _claim(self, shard: Shard) -> bool:
        with self._lock:
            if shard.sha256 in self._started:
                return False
            self._started.add(shard.sha256)
            return True

    def _run(self, shard: Shard, fut: Future, fetch: Callable[[Shard], Path] | None = None) -> None:
        try:
            fut.set_result((fetch or self._fetch)(shard))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
            fut.set_exception(exc)

    def _work(self) -> None:
        while True:
            priority, seq, shard = self._queue.get()
            if priority == _STOP:
                return
            if priority == FILL and not self._fill_ready():  # back in line: NOW and NEXT go first meanwhile
                time.sleep(FILL_RECHECK_S)
                self._queue.put((priority, seq, shard))
                continue
            with self._lock:
                fut = self._futures[shard.sha256]
            if self._claim(shard):  # a read waits (or will, next step): fetch it as the read would
                self._run(shard, fut, self._fetch_now if priority < FILL else self._fetch)
