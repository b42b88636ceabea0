"""The sharded token format, its writer and its reader, on a local directory: the samples
are the token stream cut into seq_len + 1 windows, the index is the commit, the cache holds
only verified shards, and prefetch fills it ahead of the reader."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stoker.worker import config as cfgmod  # noqa: E402
from stoker.worker.data import TRAIN, VAL, DistributedBatcher, SyntheticLM  # noqa: E402
from stoker.worker.shards import dataset_for, index as fmt  # noqa: E402
from stoker.worker.shards.__main__ import main as cli  # noqa: E402
from stoker.worker.shards.cache import ShardCorrupt  # noqa: E402
from stoker.worker.shards.reader import DatasetNotFound, ShardedTokens  # noqa: E402
from stoker.worker.shards.writer import WriteError, write_dataset  # noqa: E402

pytestmark = pytest.mark.torch

SEQ, SHARD = 16, 50


def stream(paths: list[Path]) -> np.ndarray:
    """What the byte tokenizer makes of the files: their bytes, a 0 after each."""
    return np.concatenate([np.append(np.frombuffer(p.read_bytes(), np.uint8), 0) for p in paths]).astype(np.int64)


@pytest.fixture
def dataset(tmp_path, corpus) -> Path:
    write_dataset(corpus, str(tmp_path / "ds"), seq_len=SEQ, shard_samples=SHARD, val_samples=8)
    return tmp_path / "ds"


def reader(ds: Path, cache: Path, **kw) -> ShardedTokens:
    return ShardedTokens(str(ds), cache_dir=cache, **kw)


# ----------------------------------------------------------------------- format
def test_samples_are_the_token_stream_cut_into_windows_val_first(dataset, corpus, tmp_path):
    tokens = stream(corpus)
    windows = tokens[: len(tokens) // (SEQ + 1) * (SEQ + 1)].reshape(-1, SEQ + 1)
    data = reader(dataset, tmp_path / "cache")
    assert (data.size(VAL), data.size(TRAIN)) == (8, len(windows) - 8)
    assert (data.vocab_size, data.seq_len) == (256, SEQ)
    ids = np.array([0, 49, 50, 51, data.size(TRAIN) - 1, 7, 7])  # across shard boundaries, repeats, any order
    assert torch.equal(data.samples(TRAIN, ids), torch.from_numpy(windows[8 + ids]))
    assert torch.equal(data.samples(VAL, np.arange(8)), torch.from_numpy(windows[:8]))
    assert data.samples(TRAIN, ids).dtype == torch.int64


def test_index_lists_every_shard_with_size_and_sha256(dataset):
    idx = fmt.parse((dataset / fmt.INDEX).read_text())
    assert idx.dtype == "uint16" and idx.tokenizer == "bytes"
    names = [s.name for s in idx.splits["train"]]
    assert names[0] == "shard-00000.bin" and [s.name for s in idx.splits["val"]] == ["val/shard-00000.bin"]
    for shard in idx.splits["train"] + idx.splits["val"]:
        raw = (dataset / shard.name).read_bytes()
        assert len(raw) == shard.bytes == shard.samples * (SEQ + 1) * 2
        assert hashlib.sha256(raw).hexdigest() == shard.sha256
    assert all(s.samples == SHARD for s in idx.splits["train"][:-1])


def test_shard_row_i_is_at_byte_i_times_sample_bytes(dataset, corpus):
    tokens = stream(corpus)
    raw = (dataset / "shard-00001.bin").read_bytes()
    row = np.frombuffer(raw[3 * (SEQ + 1) * 2:4 * (SEQ + 1) * 2], dtype="<u2")
    first = (8 + SHARD + 3) * (SEQ + 1)  # 8 val samples, one full shard, then row 3
    assert row.tolist() == tokens[first:first + SEQ + 1].tolist()


def test_dtype_is_uint16_up_to_65536_tokens_then_uint32():
    assert fmt.dtype_for(256) == fmt.dtype_for(65536) == "uint16"
    assert fmt.dtype_for(65537) == "uint32"


@pytest.mark.parametrize("edit, message", [
    (lambda i: i.update(version=2), "format version 2"),
    (lambda i: i["splits"]["train"]["shards"][0].update(bytes=5), "bytes is not samples"),
    (lambda i: i["splits"]["train"].update(samples=1), "not the sum"),
    (lambda i: i["splits"]["train"]["shards"][0].update(name="../x.bin"), "relative"),
    (lambda i: i.update(dtype="uint32"), "does not fit vocab_size"),
])
def test_a_bad_index_is_refused_naming_the_problem(dataset, edit, message):
    raw = json.loads((dataset / fmt.INDEX).read_text())
    edit(raw)
    with pytest.raises(fmt.FormatError, match=message):
        fmt.parse(json.dumps(raw))


# ----------------------------------------------------------------------- writer
def test_half_written_dataset_without_index_is_never_read(dataset, tmp_path):
    (dataset / fmt.INDEX).unlink()  # what a writer killed before its last upload leaves
    with pytest.raises(DatasetNotFound, match="no index.json.*writer has not finished"):
        reader(dataset, tmp_path / "cache")


def test_writer_refuses_a_target_that_holds_a_dataset(dataset, corpus):
    with pytest.raises(WriteError, match="already holds a dataset.*new prefix"):
        write_dataset(corpus, str(dataset), seq_len=SEQ, shard_samples=SHARD)


@pytest.mark.parametrize("argv, message", [
    (["--seq-len", "0"], "--seq-len: must be >= 1"),
    (["--seq-len", "8", "--shard-samples", "0"], "--shard-samples: must be >= 1"),
    (["--seq-len", "8", "--tokenizer", "gpt9"], "--tokenizer: unknown 'gpt9'"),
    (["--seq-len", "100000"], "fewer than --val-samples"),
    (["--seq-len", "8", "--val-samples", "100000"], "lower --seq-len or --val-samples"),
])
def test_writer_errors_name_the_flag_and_commit_nothing(tmp_path, corpus, capsys, argv, message):
    target = tmp_path / "bad"
    assert cli(["write", *argv, *map(str, corpus), str(target)]) == 2
    assert message in capsys.readouterr().err
    assert not (target / fmt.INDEX).exists()


def test_writer_names_a_missing_input(tmp_path, capsys):
    assert cli(["write", "--seq-len", "8", str(tmp_path / "nope.txt"), str(tmp_path / "ds")]) == 2
    assert "nope.txt' is not a file" in capsys.readouterr().err


def test_cli_writes_and_shows_a_dataset(tmp_path, corpus, capsys):
    assert cli(["write", "--tokenizer", "bytes", "--seq-len", "8", "--shard-samples", "100",
                *map(str, corpus), str(tmp_path / "ds")]) == 0
    assert cli(["info", str(tmp_path / "ds")]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["seq_len"] == 8


# ------------------------------------------------------------------------ cache
def test_a_warm_cache_is_used_without_fetching(dataset, tmp_path):
    first = reader(dataset, tmp_path / "cache")
    want = first.samples(TRAIN, np.arange(first.size(TRAIN)))
    second = reader(dataset, tmp_path / "cache")
    assert torch.equal(second.samples(TRAIN, np.arange(second.size(TRAIN))), want)
    assert first.stats.fetched == len(first.index.splits["train"]) and second.stats.fetched == 0
    assert not list((tmp_path / "cache").glob(".*.part")), "no temporary files are left behind"


def test_a_truncated_cached_shard_is_fetched_again(dataset, tmp_path):
    data = reader(dataset, tmp_path / "cache", prefetch_shards=0)  # no background fill: one shard cached
    want = data.samples(TRAIN, [0, 1])
    cached = data.cache.path(data.index.splits["train"][0])
    cached.write_bytes(cached.read_bytes()[:10])
    again = reader(dataset, tmp_path / "cache", prefetch_shards=0)
    assert torch.equal(again.samples(TRAIN, [0, 1]), want) and again.stats.fetched == 1


def test_a_download_retried_after_a_broken_try_caches_exactly_the_objects_bytes(dataset, tmp_path, monkeypatch):
    """A try that wrote more bytes than the object has, and different ones, then lost its
    connection: the retry begins the file and its hash again (ShardCache's sink)."""
    from stoker.worker.shards.cache import ShardCache
    from stoker.worker.shards.storage import S3Prefix

    shard = fmt.parse((dataset / fmt.INDEX).read_bytes(), where="t").splits["train"][1]
    good = (dataset / shard.name).read_bytes()
    tries = []

    def chunks(key, start=None, end=None):
        tries.append(key)
        if len(tries) == 1:
            yield b"x" * (2 * len(good))
            raise ConnectionError("connection reset by peer")
        yield from (good[:100], good[100:])

    source = S3Prefix("s3://bucket/data", client=object(), transport="boto3")
    monkeypatch.setattr(source, "_chunks", chunks)
    cache = ShardCache(tmp_path / "cache")
    path = cache.fetch(source, shard)
    assert len(tries) == 2 and path.read_bytes() == good
    assert not list((tmp_path / "cache").glob(".*.part")), "no temporary files are left behind"


def test_a_shard_changed_after_its_index_is_refused_and_not_cached(dataset, tmp_path):
    raw = bytearray((dataset / "shard-00000.bin").read_bytes())
    raw[5] ^= 1
    (dataset / "shard-00000.bin").write_bytes(bytes(raw))
    data = reader(dataset, tmp_path / "cache", prefetch_shards=0)
    with pytest.raises(ShardCorrupt, match="shard-00000.bin: sha256 .* is not the index's"):
        data.samples(TRAIN, [0])
    assert not list((tmp_path / "cache").iterdir()), "neither the bad shard nor a temporary file is kept"
    assert data.samples(TRAIN, [SHARD]).shape == (1, SEQ + 1), "other shards still read"


# --------------------------------------------------------------------- prefetch
def test_prefetch_fetches_the_shards_of_the_given_ids_in_the_background(dataset, tmp_path):
    data = reader(dataset, tmp_path / "cache", prefetch_shards=2, fill_cache=False)
    data.prefetch([0, SHARD * 2 + 1])
    data.wait_prefetched()
    shards = data.index.splits["train"]
    assert [data.cache.has(s) for s in shards[:3]] == [True, False, True]
    assert data.stats.fetched == 2


def test_the_rest_of_the_train_split_is_fetched_in_the_background(dataset, tmp_path):
    data = reader(dataset, tmp_path / "cache", prefetch_shards=2)
    data.wait_prefetched()
    assert all(data.cache.has(s) for s in data.index.splits["train"])
    assert not any(data.cache.has(s) for s in data.index.splits["val"]), "val is read once, on demand"
    data.close()


def test_prefetch_shards_zero_fetches_only_on_read(dataset, tmp_path):
    data = reader(dataset, tmp_path / "cache", prefetch_shards=0)
    data.prefetch([0])
    assert data.stats.fetched == 0
    data.samples(TRAIN, [0])
    assert data.stats.fetched == 1


def test_the_batcher_prefetches_the_next_step_and_keeps_a_world_size_independent_order(dataset, tmp_path):
    data = reader(dataset, tmp_path / "cache", prefetch_shards=1, fill_cache=False)
    one = DistributedBatcher(data, global_batch=8, micro_batch=2, dp_degree=1, dp_rank=0, order_seed=5)
    two = [DistributedBatcher(data, global_batch=8, micro_batch=2, dp_degree=2, dp_rank=r, order_seed=5)
           for r in range(2)]
    for _ in range(3):
        whole = torch.cat([x for x, _ in one.next_batch()])
        halves = torch.cat([x for b in two for x, _ in b.next_batch()])
        assert torch.equal(whole, halves)
    data.wait_prefetched()
    upcoming = fmt.locate(data._offsets[TRAIN], one.local_ids(one.position))[0]
    assert all(data.cache.has(data.index.splits["train"][s]) for s in upcoming), "next step's shards are cached"


# ----------------------------------------------------------------------- config
def config(tmp_path, **data) -> cfgmod.Config:
    return cfgmod.from_dict({"data": data, "train": {"global_batch": 8, "micro_batch": 2}}, environ={})


def test_without_uri_the_trainer_gets_the_synthetic_dataset(tmp_path):
    assert isinstance(dataset_for(config(tmp_path)), SyntheticLM)


def test_with_uri_the_trainer_gets_the_sharded_dataset(dataset, tmp_path):
    data = dataset_for(config(tmp_path, uri=str(dataset), vocab_size=256, seq_len=SEQ, cache_dir=str(tmp_path / "c")))
    assert isinstance(data, ShardedTokens) and data.size(TRAIN) > 0


@pytest.mark.parametrize("fields, message", [
    ({"vocab_size": 256, "seq_len": 32}, r"data.seq_len \(32\) differs .* set data.seq_len: 16"),
    ({"vocab_size": 64, "seq_len": SEQ}, r"data.vocab_size \(64\) is smaller .* set data.vocab_size: 256"),
])
def test_the_config_must_fit_the_index(dataset, tmp_path, fields, message):
    cfg = config(tmp_path, uri=str(dataset), cache_dir=str(tmp_path / "c"), **fields)
    with pytest.raises(cfgmod.ConfigError, match=message):
        dataset_for(cfg)


def test_validation_needs_a_val_split_that_is_large_enough(dataset, tmp_path):
    cfg = cfgmod.from_dict({"data": {"uri": str(dataset), "vocab_size": 256, "seq_len": SEQ,
                                     "cache_dir": str(tmp_path / "c")},
                            "validation": {"every": 1, "samples": 16}}, environ={})
    with pytest.raises(cfgmod.ConfigError, match=r"validation.samples \(16\) .* --val-samples >= 16"):
        dataset_for(cfg)


@pytest.mark.parametrize("fields, message", [
    ({"uri": "http://host/x"}, "data.uri: unsupported"),
    ({"uri": "s3://"}, "data.uri: no bucket"),
    ({"uri": "s3://b/p", "prefetch_shards": -1}, "data.prefetch_shards: must be >= 0"),
    ({"sample_log": "/tmp/x"}, "data.sample_log: only sharded datasets"),
])
def test_data_uri_fields_are_validated(tmp_path, fields, message):
    with pytest.raises(cfgmod.ConfigError, match=message):
        config(tmp_path, **fields)
