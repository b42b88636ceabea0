"""``ShardedTokens``: a sharded token dataset (see ``index.py``) read like ``SyntheticLM``.

``size(split)`` and ``samples(split, ids)`` behave as the synthetic dataset's, so the
``DistributedBatcher`` (the global sample order, its position as checkpointed state,
resume at any world size) is unchanged. Shards come from a local cache (``cache.py``),
filled on demand and ahead of time: ``prefetch(ids)``, which the batcher calls with the
next step's sample ids, starts background downloads (``prefetch_shards`` at once) of the
shards those ids live in, so the next ``samples`` call finds them on disk. Cached shards
are memory-mapped; a batch is a gather of rows. A shard a read needs that is not on disk yet
is downloaded in the background while just the needed rows come with ranged GETs
(``rows.py``), so a cold reader does not wait for whole shards.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import mmap
import threading
import time
from pathlib import Path

import numpy as np
import torch

from stoker.common import env as E
from stoker.worker.data import TRAIN, VAL

from . import index as fmt
from .cache import ShardCache
from .fetcher import FILL, NEXT, NOW, URGENT_THREADS, Fetcher
from .rows import RowReader
from .fetchd import FetchProcess
from .storage import open_prefix, resolve_transport

log = logging.getLogger("stoker.worker.shards")

SPLIT_NAMES = {TRAIN: "train", VAL: "val"}


class DatasetNotFound(FileNotFoundError):
    """No committed dataset (index.json) at the location."""


@dataclasses.dataclass(frozen=True)
class ShardedSpec:
    uri: str
    vocab_size: int
    seq_len: int
    train_samples: int
    val_samples: int


@dataclasses.dataclass
class ReadStats:
    fetched: int = 0          # shards this process downloaded into the cache
    wait_s: float = 0.0       # time samples() spent waiting for shards (or their rows)
    ranged: int = 0           # (shard, read) pairs served by ranged reads instead of the whole shard


class ShardedTokens:
    """Token samples of length seq_len + 1 from a sharded dataset (local directory or S3).

    With ``prefetch_shards > 0`` that many threads download in the background: first the
    shards the next step needs (``prefetch``), then, with ``fill_cache``, the rest of the
    train split in order (the global shuffle reads every shard within the first epoch).
    With ``ranged_reads`` (and prefetch on) a read that needs a few rows of a shard not on
    disk yet gets those rows with ranged GETs instead of waiting for the whole shard."""

    def __init__(self, uri: str, *, cache_dir: str | os.PathLike | None = None, prefetch_shards: int = 2,
                 sample_log: str | os.PathLike | None = None, fill_cache: bool = True, ranged_reads: bool = True,
                 s3_transport: str = "auto"):
        self.cache = ShardCache(cache_dir)
        self._prefetching = prefetch_shards > 0
        transport = resolve_transport(s3_transport) if uri.startswith("s3://") else None
        # Over boto3, an S3 dataset downloads in a child process (fetchd.py: boto3 in threads here would take
        # the GIL from training), started by the first download, so a warm cache never pays its start (~0.25 s
        # of CPU beside the trainer); a new cache starts it at once: its start overlaps this process's own S3
        # client and index read. The CRT client moves bytes without the GIL: its downloads run in our threads.
        self._process: FetchProcess | None = None
        self._process_lock, self._closed = threading.Lock(), False
        self._start_process = (functools.partial(FetchProcess, uri, self.cache.root,
                                                 prefetch_shards + URGENT_THREADS, self._download_here)
                               if self._prefetching and transport == "boto3" else None)
        if self.cache.is_empty():
            self._downloader()
        try:
            self._open(uri, transport or "auto")
        except BaseException:
            self._stop_process()
            raise
        self._fetcher = Fetcher(self._fetch, prefetch_shards, functools.partial(self._fetch, urgent=True),
                                fill_ready=self._fill_ready)
        self._rows = RowReader(self.source, self.index) if self._prefetching and ranged_reads else None
        missing = [s for s in self._shards[TRAIN] if not self.cache.has(s)] if self._prefetching and fill_cache else []
        if missing:
            self._downloader()  # the fill waits for it: start it now
        for shard in missing:
            self._fetcher.want(shard, FILL)
        self._log = SampleLog(sample_log) if sample_log else None

    def _open(self, uri: str, transport: str) -> None:
        """Read and check the index; the splits' shards and offsets."""
        self.source = open_prefix(uri, transport=transport)
        try:
            raw = self.source.read_bytes(fmt.INDEX)
        except Exception as exc:  # noqa: BLE001 - the CRT client's errors name neither the key nor the fix
            raise DatasetNotFound(f"{uri}: cannot read {fmt.INDEX}: {exc}; check data.uri (bucket and prefix) "
                                  f"and the S3 endpoint and credentials") from exc
        if raw is None:
            raise DatasetNotFound(f"{uri}: no {fmt.INDEX}: not a dataset, or its writer has not finished "
                                  f"(the index is written last); check data.uri or run the writer")
        self.index = fmt.parse(raw, where=f"{uri}/{fmt.INDEX}")
        self.spec = ShardedSpec(uri, self.index.vocab_size, self.index.seq_len,
                                self.index.samples("train"), self.index.samples("val"))
        self.vocab_size, self.seq_len = self.spec.vocab_size, self.spec.seq_len
        self._shards = {s: self.index.splits.get(name, ()) for s, name in SPLIT_NAMES.items()}
        self._offsets = {s: fmt.offsets_of(shards) for s, shards in self._shards.items()}
        self._maps: dict[str, np.ndarray] = {}
        self._train_keys = {s.sha256 for s in self._shards[TRAIN]}
        self._train_mapped = 0  # how many distinct train shards are mapped (prefetch stops at all)
        self._position: int | None = None
        self.stats = ReadStats()

    # -- the SyntheticLM interface
    def size(self, split: int) -> int:
        return self.spec.train_samples if split == TRAIN else self.spec.val_samples

    def samples(self, split: int, ids: list[int] | np.ndarray) -> torch.Tensor:
        """(len(ids), seq_len + 1) int64 tokens."""
        shards = self._shards[split]
        which, rows = fmt.locate(self._offsets[split], np.asarray(ids, dtype=np.int64))
        needed = np.unique(which).tolist()  # shard numbers in order; a batch touches a few
        ranged = {}
        for s in needed:  # queue every missing shard, start ranged reads, before waiting for any
            shard = shards[s]
            if shard.sha256 in self._maps or self.cache.has(shard):
                continue
            self._fetcher.want(shard, NOW)
            if self._rows is not None and self._rows.worth_it(shard, rows[which == s]):
                ranged[s] = self._rows.start(shard, rows[which == s])
        out = np.empty((len(which), self.seq_len + 1), dtype=np.int64)
        for s in ranged:
            t0 = time.perf_counter()
            out[which == s] = ranged[s]()
            self.stats.wait_s += time.perf_counter() - t0
            self.stats.ranged += 1
        missing = [shards[s] for s in needed if s not in ranged and shards[s].sha256 not in self._maps
                   and not self.cache.has(shards[s])]
        if missing:  # side by side (a cold cache's first batch needs many), then mapped below
            t0 = time.perf_counter()
            self._fetcher.get_many(missing)
            self.stats.wait_s += time.perf_counter() - t0
        arrays = {s: self._array(shards[s]) for s in needed if s not in ranged}
        for k, (s, row) in enumerate(zip(which.tolist(), rows.tolist())):  # a row each: cheaper than masks
            if s in arrays:
                out[k] = arrays[s][row]
        if self._log is not None:
            self._log.write(split, ids, out, self._position)
        return torch.from_numpy(out)

    def at_position(self, position: int) -> None:
        """The batcher's global sample position of the batch it reads next (for the sample log)."""
        self._position = position

    def prefetch(self, ids: list[int] | np.ndarray) -> None:
        """Start fetching (in the background, ahead of the cache fill) the train shards of ``ids``,
        in the order the ids need them."""
        if not self._prefetching or self._train_mapped == len(self._train_keys):
            return
        which, _ = fmt.locate(self._offsets[TRAIN], np.asarray(ids, dtype=np.int64))
        _, first = np.unique(which, return_index=True)
        for s in which[np.sort(first)]:
            shard = self._shards[TRAIN][s]
            if shard.sha256 not in self._maps and not self.cache.has(shard):
                self._fetcher.want(shard, NEXT)

    def wait_prefetched(self) -> None:
        """Block until every download started so far has finished (raising the first error)."""
        self._fetcher.wait()

    def close(self) -> None:
        """Stop the downloads: the ones in flight finish, queued ones are dropped."""
        self._fetcher.close()
        self._stop_process()
        if self._rows is not None:
            self._rows.close()

    # -- shards
    def _fetch(self, shard: fmt.Shard, urgent: bool = False) -> Path:
        if self.cache.has(shard):
            return self.cache.path(shard)
        process = self._downloader()
        path = process.fetch(shard, urgent) if process is not None else self._download_here(shard)
        self.stats.fetched += 1
        return path

    def _downloader(self) -> FetchProcess | None:
        """The download process (started on first use), or None where downloads run in this process."""
        with self._process_lock:
            if self._process is None and self._start_process is not None and not self._closed:
                self._process = self._start_process()
            return self._process

    def _stop_process(self) -> None:
        with self._process_lock:
            self._closed = True
        if self._process is not None:
            self._process.close()

    def _fill_ready(self) -> bool:
        return self._process is None or self._process.settled()

    def _download_here(self, shard: fmt.Shard) -> Path:
        return self.cache.fetch(self.source, shard)

    def _array(self, shard: fmt.Shard) -> np.ndarray:
        arr = self._maps.get(shard.sha256)
        if arr is not None:
            return arr
        t0 = time.perf_counter()
        path = self._fetcher.get(shard)
        self.stats.wait_s += time.perf_counter() - t0
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if shard.bytes else b""
        arr = np.frombuffer(mapped, dtype=fmt.DTYPES[self.index.dtype]).reshape(shard.samples, self.seq_len + 1)
        self._maps[shard.sha256] = arr
        self._train_mapped += shard.sha256 in self._train_keys
        return arr


class SampleLog:
    """Debug: one JSON line per ``samples`` call of the train split, per process
    (``<dir>/rank-<RANK>.jsonl``): the sample ids and a short sha256 of each sample's tokens,
    so a test can compare the exact sample sequence of two runs at any world sizes. Each line
    also says where it came from: the batch's global position (``at_position``), the rank,
    world size, job incarnation (STOKER_INCARNATION), torchrun restart count, pid and time,
    so the records of a step recomputed after a restart can be told apart."""

    def __init__(self, directory: str | os.PathLike):
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.path = Path(directory) / f"rank-{os.environ.get('RANK', '0')}.jsonl"
        e = os.environ
        self.origin = {"rank": int(e.get("RANK", "0")), "world": int(e.get("WORLD_SIZE", "1")),
                       "incarnation": int(e.get(E.INCARNATION) or 0),
                       "restart": int(e.get("TORCHELASTIC_RESTART_COUNT", "0")), "pid": os.getpid()}

    def write(self, split: int, ids, tokens: np.ndarray, position: int | None = None) -> None:
        if split != TRAIN:
            return
        hashes = [hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in tokens]
        line = json.dumps({"ids": [int(i) for i in ids], "sha256": hashes, "position": position, **self.origin,
                           "t": time.time()})
        with open(self.path, "a") as f:
            f.write(line + "\n")
