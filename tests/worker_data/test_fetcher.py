"""The fetcher's scheduling (shards/fetcher.py), with a stand-in download: which thread runs what."""
from __future__ import annotations

import threading
from pathlib import Path

from stoker.worker.shards.fetcher import URGENT_THREADS, Fetcher
from stoker.worker.shards.index import Shard


def shard(i: int) -> Shard:
    return Shard(name=f"shard-{i:05d}.bin", samples=10, bytes=100, sha256=f"{i:064x}")


def test_a_read_that_needs_many_shards_fetches_them_side_by_side_with_the_urgent_download():
    """A cold cache's first batch needs a shard per sample: one after another they took ~0.6 s."""
    n = URGENT_THREADS
    together = threading.Barrier(n, timeout=30)  # passes only if all n downloads run at once
    urgent, background = [], []

    def fetch_now(s: Shard) -> Path:
        urgent.append(s.name)
        together.wait()
        return Path(s.name)

    fetcher = Fetcher(lambda s: background.append(s.name) or Path(s.name), threads=0, fetch_now=fetch_now)
    wanted = [shard(i) for i in range(n)]
    assert fetcher.get_many(wanted) == [Path(s.name) for s in wanted]
    assert sorted(urgent) == sorted(s.name for s in wanted) and background == []
    assert fetcher.get_many(wanted[:2]) == [Path(wanted[0].name), Path(wanted[1].name)]  # done: not fetched again
    assert len(urgent) == n
