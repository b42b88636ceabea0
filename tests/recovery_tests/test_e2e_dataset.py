"""End to end on the real control plane, process nodes and MinIO: an elastic TrainingJob
(minReplicas 2, maxReplicas 3) of the built-in trainer reads an S3 token-shard dataset (the
writer's, in the test bucket), is SIGKILLed at a random moment at 2 workers, recovers, is
scaled to 3 (``spec.replicas``), SIGKILLed again at a random moment at 3 workers, recovers
and ends Succeeded. The moments and victims are seeded (the seed printed:
STOKER_FAULT_SEED=N replays a run).

What it checks: the sample sequence per step equals the undisturbed run's (torchrun
--standalone, 2 workers, same config and data), from the trainer's sample log (every rank
logs the ids and token hashes of each batch with its global position and where it came
from); a step recomputed after a restart counts as its last attempt read it, and every
earlier attempt's batches must match too. The loss per step is within the README's
tolerance for world-size changes (relative 1e-5) of the undisturbed run.

What the process nodes change: every pod is a local process with a working directory of its
own, so the relative ``data.cache_dir`` gives every pod a cache of its own, cold when the
pod starts (an in-place restart keeps it; the shards are small, 139 KB: the reader fetches them whole; ranged reads,
for shards of 16 MiB and more, are not exercised here). All pods share one filesystem, which is how the
sample log of all ranks lands in one folder. The scale-up happens while the world-2 workers
hold at a known step (debug.stall_after_step, after that step's checkpoint), so it resumes
from a known checkpoint; the two kills are at random moments of real training. An elastic
job's workers are restarted in place by their torchrun agents (``--max-restarts``), so the
recoveries are checked from the step journal (each resumed from the newest commit), not from
the operator's incarnation count.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest

from stoker.worker import journal
from tests.operator_tests.conftest import patch_job, wait_for
from tests.worker_data.conftest import write_corpus

from . import faults as F
from .conftest import trainer_config, write_config
from .e2e import metrics_rows, status, summary_of, trainer_pid
from .test_e2e_recovery import ELASTIC_LOSS_RTOL, fault_rng

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(1500)]

STEPS = 80
HOLD = 40          # the world-2 workers hold after this step (checkpointed) until the job grows to 3
BATCH = 12         # divisible by 2 and 3 workers x micro_batch 2
SHARD_SAMPLES = 4096


def write_s3_dataset(cluster, bucket: str, tmp: pathlib.Path) -> str:
    """About 400 KB of text as 5 shards (and a tail) in the test bucket, with the writer."""
    from stoker.worker.shards.writer import write_dataset

    uri = f"s3://{bucket}/datasets/corpus-v1"
    with mock.patch.dict(os.environ, cluster.s3_env()):   # the writer reads the standard AWS variables
        idx = write_dataset(write_corpus(tmp / "corpus", files=4, words=20_000), uri, seq_len=16,
                            shard_samples=SHARD_SAMPLES)
    assert len(idx.splits["train"]) >= 3
    return uri


def dataset_config(uri: str, sample_log: pathlib.Path) -> dict:
    cfg = trainer_config(STEPS, stall_after_step=HOLD)
    cfg["train"]["global_batch"] = BATCH
    # cache_dir is relative: each process (pod) has its own working directory, so its own cold cache
    cfg["data"] = {"uri": uri, "vocab_size": 256, "seq_len": 16, "cache_dir": "shard-cache", "prefetch_shards": 2,
                   "sample_log": str(sample_log)}
    return cfg


def reference_run(cluster, tmp: pathlib.Path, cfg: dict) -> pathlib.Path:
    """The undisturbed run: torchrun --standalone, 2 workers, the same config (its own sample
    log, no debug hold, local checkpoints), S3 credentials for the dataset. Its output folder."""
    ref = json.loads(json.dumps({k: v for k, v in cfg.items() if k != "debug"}))
    ref["checkpoint"]["uri"] = str(tmp / "ref-ckpt")
    ref["data"]["sample_log"] = str(tmp / "ref-samples")
    out = tmp / "ref"
    path = write_config(out / "config.json", ref, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "AWS_"))}
    env.update(cluster.s3_env(), OMP_NUM_THREADS="1")
    (tmp / "ref-cwd").mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "stoker.worker.train", str(path)], cwd=tmp / "ref-cwd", env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def sample_records(log_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for p in sorted(log_dir.glob("rank-*.jsonl")) for line in p.read_text().splitlines()]


def step_of(record: dict) -> int:
    assert record["position"] % BATCH == 0, record
    return record["position"] // BATCH + 1


def steps_by_last_attempt(records: list[dict]) -> dict[int, list[tuple[int, str]]]:
    """Per step, the (sample id, token sha256) pairs of the global batch, ranks in order, as
    the last attempt that read the step read it: the world size of the step's newest record,
    and for each of its ranks that rank's newest record of the step. (An elastic job's workers
    are restarted in place by torchrun: a new process per rank, the incarnation unchanged and
    the restart count only on the agent whose worker failed, so time is what orders them.)"""
    newest: dict[int, dict] = {}
    per_rank: dict[tuple[int, int, int], dict] = {}
    for r in sorted(records, key=lambda r: r["t"]):
        newest[step_of(r)] = r
        per_rank[(step_of(r), r["world"], r["rank"])] = r
    out = {}
    for step, last in newest.items():
        recs = [per_rank.get((step, last["world"], rank)) for rank in range(last["world"])]
        assert all(recs), f"step {step}: the last attempt (world {last['world']}) lacks a rank's record"
        out[step] = [pair for r in recs for pair in zip(r["ids"], r["sha256"])]
    return out


def assert_each_kill_resumed_from_the_newest_commit(jdir: pathlib.Path, injected: list[dict]) -> list[dict]:
    """After each kill, rank 0's next process (in place or in a new incarnation) resumed from
    the newest checkpoint committed before it started, or from scratch (its first record is
    step 1) when there was none (the append-only step journal)."""
    recs = sorted((r for r in journal.read(jdir) if r["rank"] == 0), key=lambda r: r["t"])
    commits = [(r["t"], r["step"]) for r in recs
               if r["event"] == "committed" or (r["event"] == "checkpoint" and r.get("ok"))]
    facts = []
    for kill in injected:
        before = {journal.writer(r) for r in recs if r["t"] <= kill["t"]}
        first = next((r for r in recs if r["t"] > kill["t"] and journal.writer(r) not in before), None)
        assert first is not None, f"no new rank-0 process after {kill}"
        newest = max((step for t, step in commits if t <= first["t"]), default=None)
        if first["event"] == "resumed":
            assert first["step"] == newest, (kill, first, newest)
        else:
            assert newest is None and first["event"] == "step" and first["step"] == 1, (kill, first, newest)
        facts.append({"killed_at_step": kill["step"], "resumed": first["step"] if first["event"] == "resumed" else 0})
    return facts


def digest(pairs: list[tuple[int, str]]) -> str:
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def test_s3_dataset_job_killed_at_2_then_scaled_to_3_and_killed_again_reads_the_undisturbed_samples(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    rng = fault_rng()
    uri = write_s3_dataset(cluster, bucket, tmp_path)
    cfg = dataset_config(uri, tmp_path / "samples")
    ref_out = reference_run(cluster, tmp_path, cfg)
    want = steps_by_last_attempt(sample_records(tmp_path / "ref-samples"))
    want_loss = {r["step"]: r["loss"] for r in metrics_rows(ref_out)}
    assert sorted(want) == sorted(want_loss) == list(range(1, STEPS + 1))

    jdir = tmp_path / "journal"
    run = trainer_run(name="ds", cfg=cfg, replicas=2, node_selector=recovery_pool, journal_dir=jdir,
                      failure_policy={"progressTimeoutSeconds": 600},  # the hold at HOLD is the test's, not a hang
                      edit=lambda body: body["spec"].update(minReplicas=2, maxReplicas=3))
    diag = run.diag

    def incarnation() -> int:
        return int(run.status().get("incarnation", 0))

    injected = []

    def kill_at_random_moment(replicas: int, **after) -> dict:
        try:
            moment = F.at_random_moment(rng, jdir, incarnation, min_steps=3, max_steps=15, timeout=300, **after)
        except TimeoutError as e:
            pytest.fail(f"after {injected}: {e}\n{diag()}")
        pod = f"ds-worker-{rng.randrange(replicas)}-{moment['incarnation']}"
        assert F.signal_pid(trainer_pid(pod), signal.SIGKILL), f"no trainer for {pod}: {diag()}"
        injected.append({"pod": pod, "t": time.time(), **moment})
        print("injected SIGKILL", json.dumps(injected[-1]))
        return moment

    # (1) at world size 2, a random moment of the first 3..15 steps (before HOLD)
    first = kill_at_random_moment(2)
    # (2) it recovers (an elastic job's torchrun agents restart the workers in place) and holds
    # at HOLD, committed at world size 2
    wait_for("checkpoint HOLD written at world size 2",
             lambda: (lc := run.status().get("lastCheckpoint") or {}).get("step") == HOLD
             and lc.get("worldSize") == 2, timeout=400, on_timeout=diag)
    assert first["step"] < HOLD
    # (3) scaled to 3: the new worker joins, the group restarts at world size 3 from HOLD
    scaled_at = time.time()
    patch_job(kube, namespace, "ds", {"spec": {"replicas": 3}})
    wait_for("training at world size 3", lambda: any(r.get("world_size") == 3 for r in metrics_rows(run.out)),
             timeout=300, interval=0.1, on_timeout=diag)
    # (4) a random moment of 3..15 steps of world-3 training (only those are recorded after the patch)
    kill_at_random_moment(3, after_t=scaled_at)
    run.wait_phase("Succeeded", timeout=400)

    # the job: every step once in the metrics, world size 2 up to HOLD and 3 after, two restarts
    summary = summary_of(run.out)
    assert summary["step"] == STEPS and summary["world_size"] == 3, summary
    rows = metrics_rows(run.out)
    assert sorted(r["step"] for r in rows) == list(range(1, STEPS + 1))
    assert {r["step"]: r["world_size"] for r in rows} == {s: 2 if s <= HOLD else 3 for s in range(1, STEPS + 1)}
    st = status(kube, namespace, "ds")
    assert st["restarts"]["userError"] == 0, st["restarts"]
    print(f"operator: incarnation {st['incarnation']}, restarts {st['restarts']}, incidents "
          f"{[(i['kind'], i.get('detectedCause'), i.get('step')) for i in st.get('incidents') or []]}")
    print("recoveries", assert_each_kill_resumed_from_the_newest_commit(jdir, injected))

    # the samples: per step the undisturbed run's, as the last attempt read them ...
    records = sample_records(tmp_path / "samples")
    have = steps_by_last_attempt(records)
    assert sorted(have) == list(range(1, STEPS + 1))
    differ = [s for s in want if digest(have[s]) != digest(want[s])]
    assert not differ, f"steps reading other samples than the undisturbed run: {differ[:10]} (injected {injected})"
    # ... and every batch any attempt read (killed ones, recomputed steps) was its slice of that step
    for r in records:
        per = BATCH // r["world"]
        assert list(zip(r["ids"], r["sha256"])) == [tuple(p) for p in want[step_of(r)][r["rank"] * per:
                                                                                         (r["rank"] + 1) * per]], r
    reads = collections.Counter(step_of(r) for r in records if r["rank"] == 0)
    print(f"sample log: {len(records)} batches by {len({r['pid'] for r in records})} processes; steps read "
          f"more than once: {sorted(s for s, n in reads.items() if n > 1)}")
    assert any(n > 1 for n in reads.values()), "no step was recomputed: the kills tested no resume"

    # the loss: within the stated tolerance of the undisturbed world-2 run at every step
    have_loss = {r["step"]: r["loss"] for r in rows}
    worst = max(abs(have_loss[s] - want_loss[s]) / abs(want_loss[s]) for s in have_loss)
    print(f"loss vs the undisturbed run: worst relative difference {worst:.2e} (tolerance {ELASTIC_LOSS_RTOL:g})")
    for s, loss in have_loss.items():
        assert loss == pytest.approx(want_loss[s], rel=ELASTIC_LOSS_RTOL), s
