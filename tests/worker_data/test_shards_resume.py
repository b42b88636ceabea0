"""The trainer on an S3 dataset keeps the exact sample sequence across a SIGKILL and a
resume at another world size.

A straight run (2 ranks, 2N steps) is the reference. The job (2 ranks, checkpoints every 2
steps, stalled after step N+1 and SIGKILLed) resumes at 3 ranks from step N with a cold
cache of its own. Every rank logs the ids and token hashes it reads (``data.sample_log``);
per step, the ranks' logs in rank order are the global batch. The job's steps 1..N (before
the kill) and N+1..2N (after) must be the reference's, sample for sample and byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.worker_train import harness as h

from .conftest import write_corpus

pytestmark = [pytest.mark.torch, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

N = 4


def global_steps(log_dir: Path, world: int) -> list[list[tuple[int, str]]]:
    """Per step, the (sample id, token sha256) pairs of the whole global batch."""
    ranks = [[json.loads(line) for line in (log_dir / f"rank-{r}.jsonl").read_text().splitlines()]
             for r in range(world)]
    assert len({len(r) for r in ranks}) == 1, "every rank read the same number of batches"
    return [[pair for r in range(world) for pair in zip(ranks[r][k]["ids"], ranks[r][k]["sha256"])]
            for k in range(len(ranks[0]))]


def test_resume_at_another_world_size_reads_exactly_the_undisturbed_sample_sequence(s3_env, bucket, tmp_path):
    from stoker.worker.shards.writer import write_dataset

    uri = f"s3://{bucket}/data/v1"
    write_dataset(write_corpus(tmp_path / "corpus", files=4, words=6000), uri, seq_len=16, shard_samples=64)

    def cfg(name: str, **sections):
        data = {"uri": uri, "vocab_size": 256, "seq_len": 16, "cache_dir": str(tmp_path / name / "cache"),
                "sample_log": str(tmp_path / name / "samples")}
        return h.base_config(tmp_path, name, data=data, parallel={"mode": "zero3"}, train={"steps": 2 * N},
                             **sections)

    straight = h.run(tmp_path, "straight", cfg("straight"), 2)
    ckpt = {"uri": f"s3://{bucket}/ckpt", "interval": 2, "async_mode": "async"}
    job = cfg("job", checkpoint=ckpt, debug={"stall_after_step": N + 1})
    h.run_until_then_kill9(tmp_path, "job", job, 2, ready=lambda: h.stalled(job))
    resumed = h.run(tmp_path, "resumed", cfg("resumed", checkpoint=ckpt), 3)

    assert resumed["summary"]["resumed_from"] == N and resumed["summary"]["resumed_world_size"] == 2
    want = global_steps(tmp_path / "straight" / "samples", 2)
    before = global_steps(tmp_path / "job" / "samples", 2)
    after = global_steps(tmp_path / "resumed" / "samples", 3)
    assert len(want) == 2 * N and len(before) == N + 1 and len(after) == N
    assert all(len(step) == 24 for step in want)
    assert before[:N] == want[:N], "before the kill"
    assert before[N] == want[N], "the step lost to the kill read the same samples"
    for k, step in enumerate(after, start=N + 1):
        assert step == want[k - 1], f"step {k} after the resume at 3 ranks reads other samples"
    assert len({i for step in want for i, _ in step}) == 2 * N * 24, "no sample twice within the epoch"
    for step, loss in h.losses(resumed["metrics"]).items():
        assert loss == pytest.approx(h.losses(straight["metrics"])[step], rel=1e-5), f"loss at step {step}"
