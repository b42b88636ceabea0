"""A few rows of a shard that is not cached yet, read with ranged GETs while the whole shard
downloads in the background, so a cold reader waits for the rows it needs, not whole shards.

What a ranged read checks: with block hashes in the index (``block_samples`` > 0, what the
writer writes) the read is widened to whole blocks and every block's bytes must match the
index's hash (128-bit prefix of its sha256); an index without them: the length of the read
only. Bytes read this way are returned, never cached: the cache holds only whole shards
checked against their size and sha256 (``cache.py``).
"""
from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from . import index as fmt
from .cache import ShardCorrupt
from .storage import LocalPrefix, S3Prefix

# A ranged read is worth it for a shard of at least MIN_SHARD_BYTES, and while it needs at most
# MAX_FRACTION of the shard's bytes; otherwise the reader waits for the whole shard (which it
# caches) instead. Below 16 MiB the requests, not the bytes, dominate: on the benchmark's local
# MinIO (2 loaded cores) the first batch from 4.3 MB shards took 601 ms with ranged reads
# (16 GETs) and 291 ms waiting for the 4 whole shards.
MIN_SHARD_BYTES = 16 << 20
MAX_FRACTION = 0.5
THREADS = 8


@dataclasses.dataclass
class RangedStats:
    gets: int = 0       # ranged GETs made
    bytes: int = 0      # bytes they returned


class RowReader:
    def __init__(self, source: LocalPrefix | S3Prefix, index: fmt.Index, threads: int = THREADS):
        self.source, self.index = source, index
        self.stats = RangedStats()
        self._dtype = fmt.DTYPES[index.dtype]
        self._row_bytes = index.sample_bytes
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._threads = threads

    def unit_rows(self, shard: fmt.Shard) -> int:
        """Rows per read unit: a hashed block, or one row when the index lists no block hashes."""
        return self.index.block_samples if shard.blocks else 1

    def worth_it(self, shard: fmt.Shard, rows: np.ndarray) -> bool:
        if shard.bytes < MIN_SHARD_BYTES:
            return False
        per = self.unit_rows(shard)
        units = len(np.unique(rows // per))
        return units * per * self._row_bytes <= MAX_FRACTION * shard.bytes

    def start(self, shard: fmt.Shard, rows: np.ndarray) -> Callable[[], np.ndarray]:
        """Start the GETs for ``rows`` (one per run of consecutive units); returns a function
        that waits for them and gives the rows, in the order asked, as (len(rows), row) tokens."""
        per = self.unit_rows(shard)
        units = np.unique(rows // per)
        runs = np.split(units, np.flatnonzero(np.diff(units) != 1) + 1)
        pool = self._executor()
        parts: list[tuple[int, Future]] = [
            (int(r[0]) * per, pool.submit(self._get, shard, int(r[0]), int(r[-1]) + 1, per)) for r in runs]

        def result() -> np.ndarray:
            out = np.empty((len(rows), self.index.seq_len + 1), dtype=self._dtype)
            for first, fut in parts:
                got = fut.result()
                sel = (rows >= first) & (rows < first + len(got))
                out[sel] = got[rows[sel] - first]
            return out

        return result

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="stoker-rows")
            return self._pool

    def _get(self, shard: fmt.Shard, first_unit: int, end_unit: int, per: int) -> np.ndarray:
        lo = first_unit * per * self._row_bytes
        hi = min(end_unit * per, shard.samples) * self._row_bytes
        where = f"{self.source.uri}/{shard.name}"
        data = self.source.read_range(shard.name, lo, hi - lo)
        with self._lock:
            self.stats.gets += 1
            self.stats.bytes += len(data)
        if len(data) != hi - lo:
            raise ShardCorrupt(f"{where}: bytes [{lo}, {hi}) read {len(data)} bytes: the shard is shorter than its "
                               f"index says; write the dataset again to a new prefix")
        if shard.blocks:
            block = per * self._row_bytes
            for u in range(first_unit, end_unit):
                got = fmt.block_hash(memoryview(data)[(u - first_unit) * block:(u - first_unit + 1) * block])
                if got != shard.blocks[u]:
                    raise ShardCorrupt(f"{where}: sha256 of block {u} (bytes from {u * block}) {got[:16]}... is not "
                                       f"the index's {shard.blocks[u][:16]}...: the shard changed after its index "
                                       f"was written; write the dataset again to a new prefix")
        return np.frombuffer(data, dtype=self._dtype).reshape(-1, self.index.seq_len + 1)
