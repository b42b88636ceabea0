"""Our S3 token loader next to LitData's (issue 16: "use a well-kept library where one fits,
measure against writing it"), on the demo model, in one run.

The same tokens (the corpus of ``bench_dataloader.py``: 57 shards of 4096 samples of 33
tokens) are written twice to one throwaway MinIO: as our dataset (``shards/writer.py``) and
as LitData chunks of the same 4096 samples (``litdata.optimize`` with its ``TokensLoader``,
uploaded next to it). Per repetition, interleaved, a fresh trainer of the demo model
(``examples/train-tiny.yaml``, one CPU process) runs ``--steps`` steps on:

- ``in-memory``: the tokens in one NumPy array (the baseline);
- ``stoker-cold`` / ``stoker-warm``: our loader, empty cache / every shard cached;
- ``litdata-cold`` / ``litdata-warm``: LitData's ``StreamingDataset`` (shuffle on, seed 0) read
  by its ``StreamingDataLoader`` with one worker process (our loader downloads in the trainer's
  threads over the CRT client; over boto3 it would use one child process), empty cache / a cache
  filled by reading the whole dataset once.

Setting up a dataset (opening it, LitData's worker start) is the trainer's setup, not in the
step times, for both. Not the same sampling: ours is a global shuffle (a step's 16 samples
come from ~16 shards), LitData's shuffles chunk order and samples within the chunks it holds
(a step reads one or two chunks): its I/O pattern is the cheaper one, and its order is not
resumable at any world size the way ours is (the property issue 16 asks for).

Needs LitData, which the project does not depend on; installed for the bench only, without
torchvision (which its image helpers want and the token path does not):

    .venv/bin/python -m pip install --no-deps litdata==0.2.76 lightning-utilities obstore
    .venv/bin/python bench/bench_dataloader_litdata.py [--reps 9] [--steps 100]

(or ``pip install --target DIR`` and ``PYTHONPATH=DIR``, leaving the virtualenv as it is).

Writes bench/results/bench_dataloader_litdata.json (raw step times, versions, commit, machine).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_dataloader import (InMemoryTokens, SEQ_LEN, compare, demo_config, summarize, timed_steps,  # noqa: E402
                                    write_corpus)
from bench.common import minio_server, print_table, write_results  # noqa: E402
from stoker.worker.checkpoint.s3 import make_client  # noqa: E402
from stoker.worker.shards.reader import ShardedTokens  # noqa: E402
from stoker.worker.shards.writer import write_dataset  # noqa: E402
from stoker.worker.trainer import Trainer  # noqa: E402

try:
    import litdata
    import litdata.streaming.downloader as lit_downloader

    # The local MinIO speaks http; LitData's obstore client refuses it unless told (a remote S3 is https).
    # At import: LitData's DataLoader workers are spawned (optimize sets the start method) and import this.
    lit_downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"
except ImportError:
    litdata = None

VARIANTS = ("in-memory", "stoker-cold", "stoker-warm", "litdata-cold", "litdata-warm")
SHARD = 4096
BUCKET = "bench-data"


def litdata_items(chunk: int):
    """``litdata.optimize``'s function (module level: its workers are spawned): chunk ``chunk``'s
    samples, one int32 tensor each (its TokensLoader concatenates them)."""
    rows = np.load(os.environ["STOKER_BENCH_ROWS"], mmap_mode="r")
    for row in rows[chunk * SHARD:(chunk + 1) * SHARD]:
        yield torch.from_numpy(np.asarray(row, dtype=np.int32))


class LitBatcher:
    """The trainer's batcher interface (``next_batch``: a step's micro-batches) over LitData's loader."""

    def __init__(self, uri: str, cache: Path, storage: dict[str, Any], micro_batch: int, global_batch: int):
        from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

        self.dataset = StreamingDataset(uri, item_loader=TokensLoader(block_size=SEQ_LEN + 1), shuffle=True, seed=0,
                                        cache_dir=str(cache), storage_options=storage)
        self.loader = StreamingDataLoader(self.dataset, batch_size=global_batch, num_workers=1)
        self.iterator = iter(self.loader)  # starts its worker process (setup, as our dataset's open is)
        self.micro_batch = micro_batch

    def next_batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tokens = next(self.iterator).to(torch.int64)
        return [(mb[:, :-1], mb[:, 1:]) for mb in tokens.split(self.micro_batch)]

    def close(self) -> None:
        self.iterator = None
        self.loader = None


def write_litdata(rows: np.ndarray, scratch: Path, uri: str) -> float:
    from litdata import TokensLoader, optimize

    np.save(scratch / "rows.npy", rows)
    os.environ["STOKER_BENCH_ROWS"] = str(scratch / "rows.npy")
    t0 = time.perf_counter()
    optimize(fn=litdata_items, inputs=list(range((len(rows) + SHARD - 1) // SHARD)), output_dir=str(scratch / "lit"),
             chunk_size=SHARD * (SEQ_LEN + 1), item_loader=TokensLoader(), num_workers=1)
    # optimize() made "spawn" this process's start method; a trainer (which does not write datasets) has
    # the platform's default, so LitData's DataLoader worker is forked as it would be in a training job
    multiprocessing.set_start_method(None, force=True)
    s3, prefix = make_client(), uri.removeprefix(f"s3://{BUCKET}/")
    for f in (scratch / "lit").iterdir():
        s3.upload_file(str(f), BUCKET, f"{prefix}/{f.name}")
    return time.perf_counter() - t0


def one_rep(variant: str, uris: dict[str, str], scratch: Path, steps: int, memory: InMemoryTokens,
            storage: dict[str, Any]) -> dict[str, Any]:
    kind, cache_kind = variant.split("-") if "-" in variant and variant != "in-memory" else (variant, "")
    cache = scratch / f"{kind}-warm" if cache_kind == "warm" else scratch / f"cold-{time.monotonic_ns()}"
    cfg = demo_config(uris["stoker"] if kind == "stoker" else None, cache, steps)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    if kind == "in-memory":
        trainer.batcher.data = memory
    elif kind == "litdata":
        trainer.batcher = LitBatcher(uris["litdata"], cache, storage, cfg.train.micro_batch, cfg.train.global_batch)
    setup_s = time.perf_counter() - t0
    try:
        return timed_steps(trainer, steps) | {"setup_s": setup_s}
    finally:
        if isinstance(trainer.data, ShardedTokens):
            trainer.data.close()
        if isinstance(trainer.batcher, LitBatcher):
            trainer.batcher.close()
        trainer.close()
        if cache_kind == "cold":
            shutil.rmtree(cache, ignore_errors=True)


def fill_litdata_cache(uri: str, cache: Path, storage: dict[str, Any], samples: int) -> None:
    batcher = LitBatcher(uri, cache, storage, 16, 16)
    for _ in range(samples // 16):
        batcher.next_batch()
    batcher.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--text-mib", type=float, default=8.0)
    args = ap.parse_args()
    if litdata is None:
        sys.exit("LitData is not installed: .venv/bin/python -m pip install --no-deps litdata==0.2.76 "
                 "lightning-utilities obstore")
    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp(prefix="stoker-bench-litdata-"))
    uris = {"stoker": f"s3://{BUCKET}/corpus", "litdata": f"s3://{BUCKET}/litdata"}
    with minio_server() as s3env:
        os.environ.update(s3env)
        storage = {"endpoint_url": s3env["AWS_ENDPOINT_URL_S3"], "aws_access_key_id": s3env["AWS_ACCESS_KEY_ID"],
                   "aws_secret_access_key": s3env["AWS_SECRET_ACCESS_KEY"]}
        make_client().create_bucket(Bucket=BUCKET)
        idx = write_dataset(write_corpus(scratch / "text", args.text_mib), uris["stoker"], seq_len=SEQ_LEN,
                            shard_samples=SHARD)
        memory = InMemoryTokens(ShardedTokens(uris["stoker"], cache_dir=scratch / "stoker-warm"))  # fills it
        lit_write_s = write_litdata(memory.tokens, scratch, uris["litdata"])
        fill_litdata_cache(uris["litdata"], scratch / "litdata-warm", storage, len(memory.tokens))
        one_rep("in-memory", uris, scratch, 5, memory, storage)  # warm up torch
        raw: dict[str, list] = {v: [] for v in VARIANTS}
        for _ in range(args.reps):
            for v in VARIANTS:
                raw[v].append(one_rep(v, uris, scratch, args.steps, memory, storage))
    shutil.rmtree(scratch, ignore_errors=True)
    rows = [{"dataset": v, **summarize(raw[v])} for v in VARIANTS]
    compare(rows, raw)
    print_table(f"demo model step time, {args.reps} reps x {args.steps} steps", rows)
    write_results("bench_dataloader_litdata", {
        "params": vars(args) | {"niceness": os.nice(0), "seq_len": SEQ_LEN, "train_samples": idx.samples("train"),
                                "shard_samples": SHARD, "litdata": litdata.__version__, "litdata_workers": 1,
                                "litdata_write_s": lit_write_s},
        "summary": rows, "raw": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
