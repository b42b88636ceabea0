"""The sharded dataset in a real S3 (the test cluster's MinIO): the writer's CLI uploads it,
the reader streams it through the cache over either client (the CRT one, the default where it
is installed, and boto3), and S3-side damage is caught. Over boto3 the downloads run in a child
process (fetchd): the tests of that process read over boto3."""
from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stoker.worker.data import TRAIN, VAL  # noqa: E402
from stoker.worker.shards import index as fmt  # noqa: E402
from stoker.worker.shards.__main__ import main as cli  # noqa: E402
from stoker.worker.shards.cache import ShardCorrupt  # noqa: E402
from stoker.worker.shards.reader import DatasetNotFound, ShardedTokens  # noqa: E402
from stoker.worker.shards.writer import WriteError, write_dataset  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.cluster]
BOTO3 = {"s3_transport": "boto3"}  # the path with the download process


@pytest.fixture(params=["crt", "boto3"])
def transport(request) -> dict:
    return {"s3_transport": request.param}


@pytest.fixture
def s3_dataset(s3_env, bucket, corpus) -> str:
    uri = f"s3://{bucket}/datasets/corpus-v1"
    assert cli(["write", "--tokenizer", "bytes", "--seq-len", "16", "--shard-samples", "40", "--val-samples", "8",
                *map(str, corpus), uri]) == 0
    return uri


def test_s3_dataset_reads_like_the_same_dataset_written_locally(s3_dataset, corpus, tmp_path, transport):
    write_dataset(corpus, str(tmp_path / "local"), seq_len=16, shard_samples=40, val_samples=8)
    local = ShardedTokens(str(tmp_path / "local"), cache_dir=tmp_path / "c1")
    remote = ShardedTokens(s3_dataset, cache_dir=tmp_path / "c2", prefetch_shards=3, **transport)
    assert remote.index == local.index  # same shards, sizes and sha256s
    ids = np.random.default_rng(0).permutation(local.size(TRAIN))
    assert torch.equal(remote.samples(TRAIN, ids), local.samples(TRAIN, ids))
    assert torch.equal(remote.samples(VAL, np.arange(8)), local.samples(VAL, np.arange(8)))
    assert remote.stats.fetched == len(remote.index.splits["train"]) + 1


def test_a_warm_cache_reads_nothing_but_the_index_from_s3(s3_dataset, tmp_path, transport):
    cold = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", **transport)
    ids = np.arange(cold.size(TRAIN))
    want = cold.samples(TRAIN, ids)
    warm = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", **transport)
    assert torch.equal(warm.samples(TRAIN, ids), want)
    assert cold.stats.fetched == len(cold.index.splits["train"]) and warm.stats.fetched == 0


def test_prefetch_downloads_from_s3_in_the_background(s3_dataset, tmp_path, transport):
    data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2, **transport)
    data.prefetch(np.arange(data.size(TRAIN)))
    data.wait_prefetched()
    assert all(data.cache.has(s) for s in data.index.splits["train"])
    data.samples(TRAIN, np.arange(data.size(TRAIN)))
    assert data.stats.fetched == len(data.index.splits["train"])


def test_a_shard_replaced_in_s3_is_refused(s3_dataset, s3, bucket, tmp_path, transport):
    key = "datasets/corpus-v1/shard-00001.bin"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[0] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", **transport)
    with pytest.raises(ShardCorrupt, match=f"{s3_dataset}/shard-00001.bin: sha256"):
        data.samples(TRAIN, [40])


def test_an_uncommitted_s3_dataset_is_not_read_and_a_committed_one_not_overwritten(s3_dataset, s3, bucket, corpus,
                                                                                  tmp_path):
    with pytest.raises(WriteError, match="already holds a dataset"):
        write_dataset(corpus, s3_dataset, seq_len=16, shard_samples=40)
    s3.delete_object(Bucket=bucket, Key=f"datasets/corpus-v1/{fmt.INDEX}")
    for transport in ("crt", "boto3"):
        with pytest.raises(DatasetNotFound, match="no index.json"):
            ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", s3_transport=transport)


def test_a_dataset_in_a_missing_bucket_fails_at_once_naming_the_location(s3_dataset, tmp_path, transport, caplog):
    import logging

    uri = "s3://no-such-bucket-stoker/datasets/corpus-v1"
    caplog.set_level(logging.INFO, logger="stoker.worker.checkpoint")
    with pytest.raises(DatasetNotFound, match=f"{uri}: cannot read index.json: .*[Bb]ucket.*check data.uri"):
        ShardedTokens(uri, cache_dir=tmp_path / "cache", **transport)
    assert "storage.retry" not in caplog.text, "a missing bucket was retried as if it could come back"
    assert "storage.gave_up" in caplog.text


def test_boto3_downloads_run_in_a_child_process_not_in_the_trainer(s3_dataset, tmp_path):
    """boto3 downloads in the trainer's threads take its GIL (a cache fill tripled the demo's step
    time): over boto3 an S3 dataset's downloads run in fetchd's process, so none may run in this one."""
    from unittest import mock

    from stoker.worker.shards.cache import ShardCache

    def in_this_process(*_a, **_k):
        raise AssertionError("a shard was downloaded in the trainer's process")

    with mock.patch.object(ShardCache, "fetch", in_this_process):
        data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2, **BOTO3)
        assert data._process.ready.wait(60), "the download process never said it was ready"
        ids = np.arange(data.size(TRAIN))
        tokens = data.samples(TRAIN, ids)
        assert data.stats.fetched == len(data.index.splits["train"])
        data.close()
    assert torch.equal(ShardedTokens(s3_dataset, cache_dir=tmp_path / "again", **BOTO3).samples(TRAIN, ids), tokens)


def test_a_warm_cache_starts_no_download_process_until_a_shard_is_missing(s3_dataset, tmp_path):
    """fetchd's start (~0.4 s of CPU beside the trainer) slowed a warm cache's first ~15 steps by
    ~14 % (bench_dataloader): with every train shard cached it is started by the first download
    (here the validation split's, which the cache fill does not fetch)."""
    cold = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2, **BOTO3)
    ids, val_ids = np.arange(cold.size(TRAIN)), np.arange(cold.size(VAL))
    other = ShardedTokens(s3_dataset, cache_dir=tmp_path / "other", **BOTO3)
    want, want_val = cold.samples(TRAIN, ids), other.samples(VAL, val_ids)
    cold.close()
    warm = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2, **BOTO3)
    assert warm._process is None, "a warm cache started the download process"
    assert torch.equal(warm.samples(TRAIN, ids), want) and warm._process is None
    assert torch.equal(warm.samples(VAL, val_ids), want_val)
    assert warm._process is not None and warm.stats.fetched > 0, "a missing shard did not start the download process"
    warm.close()


def test_a_new_cache_starts_the_download_process_before_the_index_and_stops_it_if_there_is_none(
        s3_dataset, tmp_path):
    """An empty cache (a new pod) starts fetchd at once, so that its start overlaps the index read;
    a location without a dataset leaves no child behind."""
    import os

    def children() -> set[int]:
        out = set()
        for t in os.listdir(f"/proc/{os.getpid()}/task"):
            try:  # a thread may end meanwhile (the CRT client's own come and go)
                out |= {int(c) for c in open(f"/proc/{os.getpid()}/task/{t}/children").read().split()}
            except FileNotFoundError:
                pass
        return out

    before = children()
    data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "new", prefetch_shards=2, fill_cache=False, **BOTO3)
    assert data._process is not None and data._process.pid in children() - before
    data.close()
    with pytest.raises(DatasetNotFound):
        ShardedTokens(s3_dataset + "-missing", cache_dir=tmp_path / "new2", prefetch_shards=2, **BOTO3)
    assert children() <= before, "a failed open left its download process running"


def test_a_read_does_not_wait_for_the_download_process_to_start(s3_dataset, tmp_path):
    """Until fetchd answers ready (its start-up takes ~0.5 s), a read that needs a shard now
    downloads it in the trainer, and so does a prefetch of the next step's shards (the step after
    would wait for them); only the cache fill waits for the child (test_fetcher.py)."""
    import os
    import signal
    import threading

    data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False, **BOTO3)
    process = data._downloader()
    os.kill(process.pid, signal.SIGSTOP)  # a child that never gets ready
    time.sleep(0.2)
    process.ready.clear()
    ids = np.arange(40)  # the first shard
    want = ShardedTokens(s3_dataset, cache_dir=tmp_path / "other", prefetch_shards=0, **BOTO3).samples(TRAIN, ids)
    got: list = []
    reading = threading.Thread(target=lambda: got.append(data.samples(TRAIN, ids)), daemon=True)
    reading.start()
    reading.join(timeout=60)
    try:
        assert got and torch.equal(got[0], want), "the read waited for a download process that is not ready"
        data.prefetch(np.arange(40, 80))  # the second shard: the child is stopped, so fetched here
        waiting = threading.Thread(target=data.wait_prefetched, daemon=True)
        waiting.start()
        waiting.join(timeout=60)
        assert not waiting.is_alive(), "the next step's prefetch waited for a download process that is not ready"
        assert data.cache.has(data.index.splits["train"][1])
    finally:
        os.kill(process.pid, signal.SIGCONT)
    data.close()


def test_a_lost_download_process_does_not_stop_reading(s3_dataset, tmp_path, caplog):
    import os
    import signal

    data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2, fill_cache=False, **BOTO3)
    process = data._downloader()
    os.kill(process.pid, signal.SIGKILL)
    process._proc.wait()
    ids = np.arange(data.size(TRAIN))
    want = ShardedTokens(s3_dataset, cache_dir=tmp_path / "other", **BOTO3).samples(TRAIN, ids)
    assert torch.equal(data.samples(TRAIN, ids), want)  # downloaded in the trainer's own threads instead
    assert "shard download process is gone" in caplog.text
    data.close()


def test_the_download_process_ends_with_a_trainer_killed_by_sigkill(s3_dataset, tmp_path):
    """No orphan: the child reads its requests from the trainer's pipe and ends when the pipe closes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    trainer = ("import sys, time\nfrom stoker.worker.shards.reader import ShardedTokens\n"
               "d = ShardedTokens(sys.argv[1], cache_dir=sys.argv[2], s3_transport='boto3')\n"
               "print(d._process.pid, flush=True)\n"
               "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", trainer, s3_dataset, str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def gone() -> bool:
        try:
            return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 30
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(), f"the download process {child} outlived its trainer"


def test_crt_downloads_run_in_the_trainers_threads_and_start_no_process(s3_dataset, tmp_path):
    """The CRT client moves bytes without the GIL (measured: it costs a training loop what the
    child process costs, without the child's start), so by default nothing is started beside the
    trainer; ranged reads go through it too, and a forked child makes its own native client."""
    import os

    data = ShardedTokens(s3_dataset, cache_dir=tmp_path / "cache", prefetch_shards=2)
    assert data.source.transport == "crt" and data._process is None
    ids = np.arange(data.size(TRAIN))
    want = ShardedTokens(s3_dataset, cache_dir=tmp_path / "other", **BOTO3).samples(TRAIN, ids)
    assert torch.equal(data.samples(TRAIN, ids), want)
    assert data._process is None and data.stats.fetched == len(data.index.splits["train"])
    shard = data.index.splits["train"][1]
    blob = data.cache.path(shard).read_bytes()
    assert data.source.read_range(shard.name, 100, 50) == blob[100:150]
    assert data.source.read_range(shard.name, len(blob) - 10, 50) == blob[-10:]  # short: the caller checks
    data.close()
    pid = os.fork()
    if pid == 0:  # the parent's native client is not fork-safe: the child's read must make its own
        os._exit(0 if data.source.read_bytes(fmt.INDEX) else 1)
    assert os.waitpid(pid, 0)[1] == 0
