"""Data loading: the demo model's step time (examples/train-tiny.yaml: tiny GPT, seq 32,
global batch 16, one process on the CPU) with four datasets, interleaved, fresh trainer per
repetition:

- ``synthetic``: the built-in SyntheticLM (generated on the fly, no I/O);
- ``in-memory``: the same tokens as the S3 dataset, held in one NumPy array (the baseline);
- ``s3-cold``: the S3 dataset (a throwaway MinIO) with an empty cache, prefetch on, read
  through the CRT client (the default where s3torchconnector is installed) in the trainer's threads;
- ``s3-cold-boto3``: the same over boto3 (where the CRT client is not installed; the default
  before): downloads in a child process (``shards/fetchd.py``), the first steps' in the trainer;
- ``s3-warm``: the S3 dataset with every shard already cached.

Per step it records the step time and the time spent in ``DistributedBatcher.next_batch``
(data wait), and per repetition the trainer's setup (not in the step times: a cold cache's
downloads start there). Alone, it times a cold cache's first batch right after the dataset is
opened (no setup to overlap with), on a copy of the dataset in larger shards (65536 samples,
4.3 MB), with ranged reads (forced: the reader uses them from 16 MiB shards on) and waiting
for whole shards.
Goal (issue 16): the S3 loader keeps step time within 5 % of in-memory.

    .venv/bin/python bench/bench_dataloader.py [--reps 15] [--steps 100] [--text-mib 8] [--out DIR]
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import minio_server, print_table, write_results  # noqa: E402
from stoker.worker import config as cfgmod  # noqa: E402
from stoker.worker.data import TRAIN, DistributedBatcher  # noqa: E402
from stoker.worker.checkpoint.s3 import make_client  # noqa: E402
from stoker.worker.shards import dataset_for  # noqa: E402
from stoker.worker.shards.reader import ShardedTokens  # noqa: E402
from stoker.worker.shards.writer import write_dataset  # noqa: E402
from stoker.worker.trainer import Trainer  # noqa: E402

VARIANTS = ("synthetic", "in-memory", "s3-cold", "s3-cold-boto3", "s3-warm")
SEQ_LEN = 32


class InMemoryTokens:
    """The S3 dataset's train split as one in-memory array (the baseline)."""

    def __init__(self, source: ShardedTokens):
        self.vocab_size, self.seq_len = source.vocab_size, source.seq_len
        self.tokens = source.samples(TRAIN, np.arange(source.size(TRAIN))).numpy()

    def size(self, split: int) -> int:
        return len(self.tokens) if split == TRAIN else 0

    def samples(self, split: int, ids) -> torch.Tensor:
        return torch.from_numpy(self.tokens[np.asarray(ids)])


def write_corpus(folder: Path, mib: float) -> list[Path]:
    rng = random.Random(0)
    words = [f"w{i:x}" for i in range(4000)] + ["the", "a", "of", "and", "to", "in"] * 200
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        text = " ".join(rng.choices(words, k=int(mib * 2**20 / 4 / 5)))
        paths.append(folder / f"part{i}.txt")
        paths[-1].write_text(text)
    return paths


def demo_config(uri: str | None, cache: Path, steps: int) -> cfgmod.Config:
    raw = cfgmod.read_raw(Path(__file__).resolve().parent.parent / "examples" / "train-tiny.yaml")
    raw.update(checkpoint={}, output={}, validation={"every": 0})
    raw["train"].update(steps=steps, num_threads=1)
    raw["data"] = {"vocab_size": 256, "seq_len": SEQ_LEN, "train_samples": 100_000}
    if uri:
        raw["data"].update(uri=uri, cache_dir=str(cache), prefetch_shards=2)
    return cfgmod.from_dict(raw, environ={})


def timed_steps(trainer: Trainer, steps: int) -> dict[str, Any]:
    """Run ``steps`` optimizer steps; per step: total and data-wait seconds."""
    waits: list[float] = []
    inner = trainer.batcher.next_batch

    @functools.wraps(inner)
    def next_batch():
        t0 = time.perf_counter()
        try:
            return inner()
        finally:
            waits.append(time.perf_counter() - t0)

    trainer.batcher.next_batch = next_batch
    step_s = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        step_s.append(time.perf_counter() - t0)
    return {"step_s": step_s, "wait_s": waits}


def one_rep(variant: str, uri: str, scratch: Path, warm_cache: Path, steps: int, memory: InMemoryTokens):
    cache = warm_cache if variant == "s3-warm" else scratch / f"cold-{time.monotonic_ns()}"
    cfg = demo_config(uri if variant.startswith("s3") else None, cache, steps)
    no_crt = mock.patch("stoker.worker.shards.storage.crt_available", return_value=variant != "s3-cold-boto3")
    t0 = time.perf_counter()
    with no_crt:  # s3-cold-boto3: as where the CRT client is not installed
        trainer = Trainer(cfg)  # no STOKER_OPERATOR_ADDR: the SDK session is a no-op
    setup_s = time.perf_counter() - t0
    if variant == "in-memory":
        trainer.batcher.data = memory
    try:
        return timed_steps(trainer, steps) | {"setup_s": setup_s}
    finally:
        if isinstance(trainer.data, ShardedTokens):
            trainer.data.close()
        trainer.close()
        if variant.startswith("s3-cold"):
            shutil.rmtree(cache, ignore_errors=True)


def isolated_batch_us(data, calls: int = 500) -> list[float]:
    """``next_batch`` alone (no training between calls), microseconds per call, 5 rounds."""
    batcher = DistributedBatcher(data, global_batch=16, micro_batch=2, dp_degree=1, dp_rank=0, order_seed=0)
    for _ in range(50):
        batcher.next_batch()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            batcher.next_batch()
        rounds.append(1e6 * (time.perf_counter() - t0) / calls)
    return rounds


def cold_first_batch_ms(uri: str, scratch: Path, *, ranged: bool, rounds: int = 5) -> list[float]:
    """A cold cache's first batch (the demo's 16 samples) right after opening the dataset, ms;
    ``ranged``: ranged reads for any shard size (the reader's own threshold is 16 MiB)."""
    from stoker.worker.shards import rows

    rows.MIN_SHARD_BYTES = 0 if ranged else 16 << 20
    out = []
    for _ in range(rounds):
        cache = scratch / f"first-{time.monotonic_ns()}"
        t0 = time.perf_counter()
        data = ShardedTokens(uri, cache_dir=cache, prefetch_shards=2, ranged_reads=ranged)
        batcher = DistributedBatcher(data, global_batch=16, micro_batch=2, dp_degree=1, dp_rank=0, order_seed=0)
        batcher.next_batch()
        out.append(1e3 * (time.perf_counter() - t0))
        data.close()
        shutil.rmtree(cache, ignore_errors=True)
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Over repetitions: the median and the best (min) of each repetition's mean step time
    (cold-cache waits included), the median step, the first step, and the data wait."""
    means = [statistics.fmean(s["step_s"]) for s in samples]
    return {"mean_step_ms": 1e3 * statistics.median(means), "best_mean_ms": 1e3 * min(means),
            "worst_mean_ms": 1e3 * max(means),
            "median_step_ms": 1e3 * statistics.median(statistics.median(s["step_s"]) for s in samples),
            "first_step_ms": 1e3 * statistics.median(s["step_s"][0] for s in samples),
            "setup_ms": 1e3 * statistics.median(s["setup_s"] for s in samples),
            "wait_ms": 1e3 * statistics.median(statistics.fmean(s["wait_s"]) for s in samples),
            "data_wait": sum(sum(s["wait_s"]) for s in samples) / sum(sum(s["step_s"]) for s in samples)}


def paired_ratios(raw: dict[str, list], variant: str) -> list[float]:
    """Per repetition, the variant's mean step over in-memory's mean step in the same repetition
    (run next to each other, so a neighbour's load hits both alike)."""
    return [statistics.fmean(a["step_s"]) / statistics.fmean(b["step_s"])
            for a, b in zip(raw[variant], raw["in-memory"])]


def compare(rows: list[dict[str, Any]], raw: dict[str, list]) -> None:
    """Each row against in-memory: the paired step-time ratio (median and range over
    repetitions), the ratio of medians and of best repetitions, and the extra data wait per step
    as a fraction of in-memory's median step."""
    base = next(r for r in rows if r["dataset"] == "in-memory")
    for r in rows:
        paired = paired_ratios(raw, r["dataset"])
        r["paired_ratio"] = statistics.median(paired)
        r["paired_min"], r["paired_max"] = min(paired), max(paired)
        r["vs_in_memory"] = r["mean_step_ms"] / base["mean_step_ms"]
        r["best_vs_in_memory"] = r["best_mean_ms"] / base["best_mean_ms"]
        r["extra_wait"] = (r["wait_ms"] - base["wait_ms"]) / base["median_step_ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--text-mib", type=float, default=8.0, help="corpus size (bytes tokenizer: 1 token/byte)")
    ap.add_argument("--shard-samples", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON there instead of bench/results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="stoker-bench-data-"))
    with minio_server() as s3env:
        os.environ.update(s3env)
        make_client().create_bucket(Bucket="bench-data")
        uri = "s3://bench-data/corpus"
        t0 = time.perf_counter()
        idx = write_dataset(write_corpus(scratch / "text", args.text_mib), uri, seq_len=SEQ_LEN,
                            shard_samples=args.shard_samples)
        write_s = time.perf_counter() - t0
        big_uri = "s3://bench-data/corpus-big"
        write_dataset(sorted((scratch / "text").glob("part*.txt")), big_uri, seq_len=SEQ_LEN, shard_samples=65536)
        warm = ShardedTokens(uri, cache_dir=scratch / "warm")
        memory = InMemoryTokens(warm)  # also fills the warm cache
        raw: dict[str, list] = {v: [] for v in VARIANTS}
        one_rep("synthetic", uri, scratch, scratch / "warm", 5, memory)  # warm up torch
        for _ in range(args.reps):  # interleaved, so drift and neighbours hit every variant alike
            for v in VARIANTS:
                raw[v].append(one_rep(v, uri, scratch, scratch / "warm", args.steps, memory))
        isolated = {"synthetic": isolated_batch_us(dataset_for(demo_config(None, scratch, args.steps))),
                    "in-memory": isolated_batch_us(memory), "s3-warm": isolated_batch_us(warm)}
        first_batch = {"ranged": cold_first_batch_ms(big_uri, scratch, ranged=True),
                       "whole_shards": cold_first_batch_ms(big_uri, scratch, ranged=False)}
    shutil.rmtree(scratch, ignore_errors=True)
    rows = [{"dataset": v, **summarize(raw[v])} for v in VARIANTS]
    compare(rows, raw)
    for r in rows:
        r["batch_alone_us"] = statistics.median(isolated[r["dataset"]]) if r["dataset"] in isolated else None
    print_table(f"demo model step time, {args.reps} reps x {args.steps} steps", rows)
    cold_first = {k: statistics.median(v) for k, v in first_batch.items()}
    print(f"cold cache, 65536-sample shards, first batch right after opening (median of 5): "
          f"ranged reads (forced) {cold_first['ranged']:.1f} ms, waiting for whole shards {cold_first['whole_shards']:.1f} ms")
    goal = {r["dataset"]: {"paired_ratio": r["paired_ratio"], "extra_wait": r["extra_wait"],
                           "met": r["paired_ratio"] <= 1.05 and r["extra_wait"] <= 0.05}
            for r in rows if r["dataset"].startswith("s3")}
    write_results("bench_dataloader", {
        "params": vars(args) | {"niceness": os.nice(0), "seq_len": SEQ_LEN, "train_samples": idx.samples("train"),
                                "shards": len(idx.splits["train"]), "dataset_bytes": sum(
                                    s.bytes for s in idx.splits["train"]), "write_s": write_s},
        "summary": rows, "goal": "S3 step time within 5% of in-memory: the median over repetitions of the "
                                  "paired ratio (the repetition's mean step, cold-cache waits included, over "
                                  "in-memory's in the same repetition) <= 1.05, and extra data wait <= 5% of "
                                  "the step",
        "goal_met": goal, "cold_first_batch_ms": cold_first, "raw": raw, "raw_batch_alone_us": isolated,
        "raw_cold_first_batch_ms": first_batch}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
