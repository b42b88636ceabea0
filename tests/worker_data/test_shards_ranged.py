"""A cold reader does not wait for whole shards: the rows a read needs come with ranged reads
(checked block by block against the index's block hashes, or by length in an index without
them) while the whole shard downloads in the background into the verified cache; the batcher
starts fetching the first step's shards when it is built and the resumed step's on restore."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stoker.worker.data import TRAIN, DistributedBatcher  # noqa: E402
from stoker.worker.shards import index as fmt  # noqa: E402
from stoker.worker.shards.cache import ShardCorrupt  # noqa: E402
from stoker.worker.shards.reader import ShardedTokens  # noqa: E402
from stoker.worker.shards.storage import LocalPrefix  # noqa: E402
from stoker.worker.shards.writer import write_dataset  # noqa: E402

pytestmark = pytest.mark.torch

SEQ, SHARD, BLOCK = 16, 50, 5


@pytest.fixture
def dataset(tmp_path, corpus) -> Path:
    write_dataset(corpus, str(tmp_path / "ds"), seq_len=SEQ, shard_samples=SHARD, block_samples=BLOCK)
    return tmp_path / "ds"


@pytest.fixture(autouse=True)
def small_shards_read_ranged(monkeypatch):
    """The test shards are 1.7 KB; ranged reads start at 16 MiB shards otherwise."""
    monkeypatch.setattr("stoker.worker.shards.rows.MIN_SHARD_BYTES", 0)


@pytest.fixture
def slow_downloads(monkeypatch):
    """Whole-shard downloads block until ``release`` is set (ranged reads do not)."""
    release = threading.Event()
    real = LocalPrefix.download

    def download(self, name, out):
        release.wait(30)
        real(self, name, out)

    monkeypatch.setattr(LocalPrefix, "download", download)
    yield release
    release.set()


def expected(ds: Path, ids) -> torch.Tensor:
    """The samples read straight from the shard files (no reader, no cache)."""
    idx = fmt.parse((ds / fmt.INDEX).read_text())
    shards = idx.splits["train"]
    which, rows = fmt.locate(fmt.offsets_of(shards), np.asarray(ids))
    arrays = {s: np.fromfile(ds / shards[s].name, dtype="<u2").reshape(-1, SEQ + 1) for s in set(which.tolist())}
    return torch.from_numpy(np.stack([arrays[s][r] for s, r in zip(which, rows)]).astype(np.int64))


def test_the_writer_lists_a_hash_per_block_of_rows(dataset):
    idx = fmt.parse((dataset / fmt.INDEX).read_text())
    assert idx.block_samples == BLOCK
    for shard in idx.splits["train"]:
        raw = (dataset / shard.name).read_bytes()
        step = BLOCK * idx.sample_bytes
        assert shard.blocks == tuple(fmt.block_hash(raw[i:i + step]) for i in range(0, len(raw), step))
    assert fmt.parse(idx.to_json()) == idx


def test_default_blocks_are_about_16_kib_and_at_most_256_per_shard():
    from stoker.worker.shards.writer import default_block_samples

    assert default_block_samples(34, 50) == 50                 # a small shard is one block
    assert default_block_samples(2050, 65536) == 256           # 65536 / 256 (more than 16 KiB / 2050 = 8)
    assert default_block_samples(66, 4096) == 249              # ceil(16384 / 66)


def test_a_cold_read_gets_its_rows_without_waiting_for_the_whole_shards(dataset, tmp_path, slow_downloads):
    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    ids = np.array([3, 77, 151, 49, 50, 148])
    t0 = time.perf_counter()
    got = data.samples(TRAIN, ids)
    assert time.perf_counter() - t0 < 5, "the read waited for a whole-shard download"
    assert torch.equal(got, expected(dataset, ids))
    assert data.stats.ranged == 4 and data.stats.fetched == 0  # shards 0..3, none downloaded yet
    assert data._rows.stats.bytes == 6 * BLOCK * (SEQ + 1) * 2  # six blocks: rows 0-4, 45-49, 50-54, ...
    slow_downloads.set()
    data.wait_prefetched()  # meanwhile the whole shards were queued and are now cached (verified)
    assert all(data.cache.has(s) for s in data.index.splits["train"][:4])
    gets = data._rows.stats.gets
    assert torch.equal(data.samples(TRAIN, ids), got) and data._rows.stats.gets == gets, "now read from the cache"
    data.close()


def test_a_small_shard_is_fetched_whole_not_ranged(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("stoker.worker.shards.rows.MIN_SHARD_BYTES", 16 << 20)
    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    assert torch.equal(data.samples(TRAIN, [3]), expected(dataset, [3]))
    assert data.stats.ranged == 0 and data.stats.fetched == 1
    data.close()


def test_a_read_of_most_of_a_shard_waits_for_the_whole_shard(dataset, tmp_path):
    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    ids = np.arange(0, 40)  # 8 of the shard's 10 blocks: more than half
    assert torch.equal(data.samples(TRAIN, ids), expected(dataset, ids))
    assert data.stats.ranged == 0 and data.stats.fetched == 1
    data.close()


def test_a_changed_block_is_refused_naming_it(dataset, tmp_path, slow_downloads):
    raw = bytearray((dataset / "shard-00001.bin").read_bytes())
    raw[7 * (SEQ + 1) * 2] ^= 1  # row 7 of shard 1: block 1
    (dataset / "shard-00001.bin").write_bytes(bytes(raw))
    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    with pytest.raises(ShardCorrupt, match=r"shard-00001.bin: sha256 of block 1 \(bytes from 170\)"):
        data.samples(TRAIN, [SHARD + 7])
    assert data.samples(TRAIN, [SHARD + 2]).shape == (1, SEQ + 1), "the other blocks still read"
    slow_downloads.set()
    with pytest.raises(ShardCorrupt, match="shard-00001.bin: sha256 .* is not the index's"):
        data.wait_prefetched()  # and the whole shard is refused by the cache as before
    assert not data.cache.has(data.index.splits["train"][1])
    data.close()


def test_without_block_hashes_ranged_reads_check_the_length_only(dataset, tmp_path, slow_downloads):
    raw = json.loads((dataset / fmt.INDEX).read_text())
    del raw["block_samples"]
    for split in raw["splits"].values():
        for s in split["shards"]:
            del s["blocks"]
    (dataset / fmt.INDEX).write_text(json.dumps(raw))
    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    ids = np.array([3, 4, 5, 60])
    assert torch.equal(data.samples(TRAIN, ids), expected(dataset, ids))
    assert data._rows.stats.gets == 2 and data._rows.stats.bytes == 4 * (SEQ + 1) * 2  # rows 3-5 in one GET
    (dataset / "shard-00002.bin").write_bytes((dataset / "shard-00002.bin").read_bytes()[:100])
    with pytest.raises(ShardCorrupt, match=r"shard-00002.bin: bytes \[68, 102\) read 32 bytes"):
        data.samples(TRAIN, [2 * SHARD + 2])
    slow_downloads.set()
    data.close()


def test_a_wrong_number_of_block_hashes_is_refused(dataset):
    raw = json.loads((dataset / fmt.INDEX).read_text())
    raw["splits"]["train"]["shards"][0]["blocks"].pop()
    with pytest.raises(fmt.FormatError, match=r"shards\[0\]: expected 10 block hashes"):
        fmt.parse(json.dumps(raw))


def test_the_batcher_starts_fetching_the_first_steps_when_built_and_the_resumed_steps_on_restore(dataset, tmp_path):
    from stoker.worker.data import PREFETCH_STEPS

    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    batcher = DistributedBatcher(data, global_batch=8, micro_batch=2, dp_degree=1, dp_rank=0, order_seed=5)

    def shards_of_steps(position: int) -> set[int]:
        ids = np.concatenate([batcher.local_ids(position + 8 * k) for k in range(PREFETCH_STEPS)])
        return {int(s) for s in fmt.locate(data._offsets[TRAIN], ids)[0]}

    data.wait_prefetched()
    assert {i for i, s in enumerate(data.index.splits["train"]) if data.cache.has(s)} == shards_of_steps(0)
    batcher.load_state_dict({"sample_index": 40})
    data.wait_prefetched()
    assert all(data.cache.has(data.index.splits["train"][s]) for s in shards_of_steps(40))
    data.close()


def test_the_sample_log_says_which_position_and_process_each_batch_came_from(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("STOKER_INCARNATION", "3")
    data = ShardedTokens(str(dataset), cache_dir=tmp_path / "cache", sample_log=tmp_path / "log")
    batcher = DistributedBatcher(data, global_batch=8, micro_batch=2, dp_degree=2, dp_rank=1, order_seed=5)
    batcher.next_batch()
    batcher.next_batch()
    lines = [json.loads(x) for x in (tmp_path / "log" / "rank-1.jsonl").read_text().splitlines()]
    assert [x["position"] for x in lines] == [0, 8]
    assert lines[1]["ids"] == batcher.local_ids(8).tolist() and len(lines[1]["sha256"]) == 4
    assert {(x["rank"], x["world"], x["incarnation"]) for x in lines} == {(1, 2, 3)}
    data.close()
