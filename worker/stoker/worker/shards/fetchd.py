"""Shard downloads over boto3 in a process of their own, so they never hold the trainer's GIL.

Downloading a shard with boto3 is mostly Python (the client signs, parses and copies), and in
the trainer's process those threads take the GIL from the training loop: on the demo model a
background cache fill in threads tripled the step time, in a child process it cost ~5%
(bench/bench_dataloader.py; the experiment is in the issue-16 closing note). So where the CRT
client is not installed (with it, downloads run in the trainer's threads: ``storage.py``), an S3
dataset's downloads run in ``python -m stoker.worker.shards.fetchd URI CACHE_DIR THREADS``:

- the trainer writes one JSON line per shard to its stdin: ``{"id": n, "shard": {...}}``;
- it downloads into the same content-addressed cache (``cache.py``: verified, renamed into
  place), ``THREADS`` at a time, and answers ``{"id": n, "path": ...}`` or
  ``{"id": n, "error": "ShardCorrupt" | "...", "message": ...}`` on stdout;
- it answers ``{"ready": true}`` once its S3 client is up (its start, imports included, takes
  ~0.2 s on an idle machine, longer beside a trainer: longer than a cold cache's first shard takes
  to download; it imports no NumPy and no torch);
- it exits when its stdin closes (the trainer closed the dataset or died).

``FetchProcess`` is the trainer's side: ``fetch(shard)`` blocks (releasing the GIL) until
the answer. ``fetch(shard, urgent=True)`` (a read that needs the shard now, or the next step
will) downloads in the caller's thread while the child is not ready yet: the step waits for
that shard either way, and the child's start-up would only add to the wait (the cold cache's
first step). If the
child dies, waiting calls fail, and later ones fetch in the caller's own thread (logged
once): a dead helper must never stop training.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .cache import ShardCache, ShardCorrupt
from .index import Shard

log = logging.getLogger("stoker.worker.shards")


class FetchProcess:
    def __init__(self, uri: str, cache_root: Path, threads: int, in_thread: Callable[[Shard], Path]):
        self._in_thread = in_thread
        self._lock = threading.RLock()  # _ask holds it when it finds the child gone
        self._pending: dict[int, Future] = {}
        self._next_id = 0
        self._dead = False
        self.ready = threading.Event()
        self._proc = subprocess.Popen([sys.executable, "-m", "stoker.worker.shards.fetchd", uri, str(cache_root),
                                       str(max(1, threads))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read_answers, name="stoker-fetchd-answers", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def fetch(self, shard: Shard, urgent: bool = False) -> Path:
        if urgent and not self.ready.is_set():
            return self._in_thread(shard)
        fut = self._ask(shard)
        if fut is None:
            return self._in_thread(shard)
        return fut.result()

    def settled(self) -> bool:
        """Ready, or gone (its fetches then run in the caller's thread): background work may start."""
        return self.ready.is_set() or self._dead

    def close(self) -> None:
        with self._lock:
            self._dead = True
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)

    def _ask(self, shard: Shard) -> Future | None:
        with self._lock:
            if self._dead:
                return None
            n, self._next_id = self._next_id, self._next_id + 1
            fut = self._pending[n] = Future()
            try:
                self._proc.stdin.write(json.dumps({"id": n, "shard": dataclasses.asdict(shard)}) + "\n")
                self._proc.stdin.flush()
            except (OSError, ValueError):  # the child is gone
                del self._pending[n]
                self._die("its stdin is closed")
                return None
        return fut

    def _read_answers(self) -> None:
        for line in self._proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.set()
                continue
            with self._lock:
                fut = self._pending.pop(msg["id"], None)
            if fut is not None:
                if "path" in msg:
                    fut.set_result(Path(msg["path"]))
                else:
                    fut.set_exception(_error(msg))
        with self._lock:
            closing = self._dead
        if not closing:
            self._die(f"it exited ({self._proc.wait()})")

    def _die(self, why: str) -> None:
        """Fail what waits; later fetches run in the caller's thread."""
        with self._lock:
            self._dead = True
            pending, self._pending = self._pending, {}
        log.warning("shards.fetchd_lost: the shard download process is gone (%s); downloading in the trainer", why)
        for fut in pending.values():
            fut.set_exception(RuntimeError(f"shard download process lost: {why}"))


def _error(msg: dict) -> Exception:
    if msg.get("error") == "ShardCorrupt":
        return ShardCorrupt(msg["message"])
    return RuntimeError(f"{msg.get('error')}: {msg.get('message')}")


def serve(uri: str, cache_root: str, threads: int) -> None:
    from .storage import open_prefix

    source, cache = open_prefix(uri, transport="boto3"), ShardCache(cache_root)  # the reader's boto3 path
    out_lock = threading.Lock()

    def answer(msg: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    answer({"ready": True})

    def one(n: int, shard: Shard) -> None:
        try:
            answer({"id": n, "path": str(cache.fetch(source, shard))})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the trainer
            answer({"id": n, "error": type(exc).__name__, "message": str(exc)})

    with ThreadPoolExecutor(threads, thread_name_prefix="fetchd") as pool:
        for line in sys.stdin:
            req = json.loads(line)
            d = req["shard"]
            pool.submit(one, req["id"], Shard(**{**d, "blocks": tuple(d.get("blocks", ()))}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
