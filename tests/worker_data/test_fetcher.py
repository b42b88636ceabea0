"""The fetcher's scheduling (shards/fetcher.py), with a stand-in download: which thread runs what."""
from __future__ import annotations

import threading
from pathlib import Path

from stoker.worker.shards.fetcher import FILL, NEXT, URGENT_THREADS, Fetcher
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


def test_a_worker_that_picks_up_a_shard_a_read_waits_for_downloads_it_as_the_read_would():
    """A read queues what it needs at NOW, and a background worker may claim it first. That worker
    must fetch it the way the read would (``fetch_now``: in its own thread while fetchd is not
    ready), not hand it to a download process that may still be starting (a CI run waited 60 s)."""
    stalled = threading.Event()  # the background path never answers, like a fetchd that never got ready
    now_calls = []

    def background(s: Shard) -> Path:
        stalled.wait(60)
        return Path("late")

    def fetch_now(s: Shard) -> Path:
        now_calls.append(threading.current_thread().name)
        return Path(s.name)

    fetcher = Fetcher(background, threads=1, fetch_now=fetch_now)
    s = shard(0)
    fetcher.want(s, 0)  # NOW: what samples() does before get_many
    for _ in range(500):  # until the worker has claimed it (the race CI lost)
        if s.sha256 in fetcher._started:
            break
        threading.Event().wait(0.01)
    got: list = []
    reading = threading.Thread(target=lambda: got.append(fetcher.get_many([s])), daemon=True)
    reading.start()
    reading.join(timeout=10)
    stalled.set()
    assert got == [[Path(s.name)]], "the read waited on the background download path"
    assert now_calls and now_calls[0].startswith("stoker-shards-")


def test_the_cache_fill_waits_for_the_download_process_and_a_read_fetches_a_waiting_fill_shard_itself():
    """The cold cache's first step waited ~250 ms for shards the fill had handed to a fetchd still
    starting. Until ``fill_ready``, fill shards stay unclaimed (a read fetches one itself, at once);
    next-step shards are fetched as a read would; after it, the fill goes through the background path."""
    up = threading.Event()
    background, now_calls = [], []

    def fetch_now(s: Shard) -> Path:
        now_calls.append((s.name, threading.current_thread().name))
        return Path(s.name)

    fetcher = Fetcher(lambda s: background.append(s.name) or Path(s.name), threads=2, fetch_now=fetch_now,
                      fill_ready=up.is_set)
    fill = [shard(i) for i in range(3)]
    for s in fill:
        fetcher.want(s, FILL)
    nxt = fetcher.want(shard(7), NEXT)
    assert nxt.result(timeout=10) == Path(shard(7).name)
    threading.Event().wait(0.2)  # the workers have seen the fill shards by now
    assert background == [] and not any(s.sha256 in fetcher._started for s in fill)
    reader = threading.current_thread().name
    assert fetcher.get(fill[0]) == Path(fill[0].name)
    assert (fill[0].name, reader) in now_calls, "the read waited for the fill instead of fetching the shard"
    up.set()
    fetcher.wait()
    assert sorted(background) == [fill[1].name, fill[2].name]
    first_name, first_thread = now_calls[0]
    assert first_name == shard(7).name and first_thread.startswith("stoker-shards-")
    fetcher.close()


def test_the_download_process_imports_neither_numpy_nor_torch():
    """fetchd starts while a cold cache's first steps train: every import is CPU taken from them."""
    import subprocess
    import sys

    code = ("import sys, stoker.worker.shards.fetchd, stoker.worker.shards.storage\n"
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
