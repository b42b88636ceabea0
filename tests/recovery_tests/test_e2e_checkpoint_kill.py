"""Acceptance scenario 6 end to end: a worker SIGKILLed while a checkpoint is being
written. The checkpoint of step 10 stores every shard and DCP's metadata, then its
commit is held back (the trainer's ``debug.slow_checkpoint_at_step``); meanwhile both
ranks train on to step 15 and wait there for it. One worker's trainer is killed in
that state. A checkpoint is complete or never used: the half-written step 10 is not
listed as committed, the operator records the kill and restarts the job, the new
incarnation resumes from step 5, and the job ends Succeeded with parameters identical
to an undisturbed run."""
from __future__ import annotations

import collections
import json
import os
import signal
import time

import pytest
from kubernetes.client.rest import ApiException

from stoker.common import layout
from tests.operator_tests.conftest import wait_for

from . import faults as F
from .conftest import reference_summary, trainer_config
from .e2e import status, trainer_pid

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

JOB, SLOW, BLOCKED = "ckkill", 10, 15   # checkpoints every 5 steps: 5 commits, 10 is held, 15 waits for it
VICTIM, PEER = f"{JOB}-worker-1-0", f"{JOB}-worker-0-0"


def trainer_log(kube, namespace: str, pod: str) -> list[dict]:
    try:
        text = kube.core.read_namespaced_pod_log(pod, namespace, container="trainer")
    except ApiException:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def holding_commit(kube, namespace: str, pod: str, step: int) -> bool:
    """The pod's trainer logged that the save of ``step`` stored its shards and holds its commit."""
    return any(str(r.get("msg", "")).startswith(f"checkpoint.slow_write step={step} ")
               for r in trainer_log(kube, namespace, pod))


def heartbeats(kube, namespace: str) -> dict[str, dict]:
    return {b["pod"]: b for b in status(kube, namespace, JOB).get("workerHeartbeats") or []}


def step_keys(s3, bucket: str, step: int) -> set[str]:
    prefix = f"{JOB}/{layout.step_dir(step)}/"
    return {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_worker_killed_while_a_checkpoint_is_written_resumes_from_the_previous_one_and_ends_identical(
        cluster, kube, namespace, bucket, s3, recovery_pool, trainer_run, tmp_path, monkeypatch):
    from stoker.worker.checkpoint import open_store
    from stoker.worker.checkpoint.store import committed_steps

    cfg = trainer_config(20, slow_checkpoint_at_step=SLOW)  # held until the kill (the default hold is an hour)
    ref = reference_summary(tmp_path, cfg, 2)
    # The ranks wait at step 15 for as long as the test needs: not a hang.
    jdir = tmp_path / "journal"
    run = trainer_run(name=JOB, cfg=cfg, node_selector=recovery_pool, journal_dir=jdir,
                      # a new incarnation (in-place restarts off): the rewrite of step 10 is the next incarnation's
                      failure_policy={"progressTimeoutSeconds": 3600, "inPlaceRestarts": 0})
    out, ops_diag = run.out, run.diag

    def diag():
        logs = {p: [r.get("msg") for r in trainer_log(kube, namespace, p)][-15:] for p in (PEER, VICTIM)}
        return f"{ops_diag()}\ntrainer logs:\n{json.dumps(logs, indent=1)}"

    # 1. both ranks stored step 10's shards and hold its commit ...
    wait_for(f"both trainers holding the commit of step {SLOW}",
             lambda: all(holding_commit(kube, namespace, p, SLOW) for p in (PEER, VICTIM)), timeout=300,
             interval=0.5, on_timeout=diag)
    # ... and trained on to step 15, whose save waits for it (so the state at the kill is known)
    wait_for(f"both ranks at step {BLOCKED}, saving", lambda: (b := heartbeats(kube, namespace)).keys() ==
             {PEER, VICTIM} and all(x["step"] == BLOCKED and x["phase"] == "CHECKPOINTING" for x in b.values()),
             timeout=240, on_timeout=diag)

    # 2. what storage holds at the moment of the kill: step 10 half written, never committed
    partial = step_keys(s3, bucket, SLOW)
    assert layout.DCP_METADATA in partial and any(k.endswith(".distcp") for k in partial), partial
    assert layout.COMMIT_MARKER not in partial and layout.MANIFEST not in partial, partial
    for key, value in cluster.s3_env().items():
        monkeypatch.setenv(key, value)
    store = open_store(f"s3://{bucket}/{JOB}")
    assert SLOW in store.list_steps() and committed_steps(store) == [5]
    assert (status(kube, namespace, JOB).get("lastCheckpoint") or {}).get("step") == 5

    pid = wait_for(f"trainer of {VICTIM}", lambda: trainer_pid(VICTIM), timeout=30, on_timeout=diag)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)

    # 3. recovered from the last complete checkpoint, identical to the undisturbed run
    wait_for("job Succeeded", lambda: status(kube, namespace, JOB).get("phase") == "Succeeded", timeout=300,
             on_timeout=diag)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 20 and summary["resumed_from"] == 5, "the half-written step 10 was never loaded"
    assert summary["checksum"] == ref["checksum"]
    # from rank 0's append-only journal: steps 6-15 (after the last commit, 5) computed
    # exactly twice (lost with the uncommitted checkpoint, redone once), every other step once
    counts = collections.Counter(F.computed_steps(jdir))
    assert counts == {s: 2 if 6 <= s <= 15 else 1 for s in range(1, 21)}, counts
    assert F.resumed_steps(jdir) == [5]

    # 4. the incident, with its cause
    st = status(kube, namespace, JOB)
    assert st["incarnation"] == 1
    assert st["restarts"] == {"userError": 0, "infrastructure": 1, "preemption": 0, "total": 1}
    [inc] = st["incidents"]
    assert inc["kind"] == "Restart" and inc["detectedCause"] == "WorkerKilled" and inc["cause"] == "infrastructure"
    assert inc["pod"] == VICTIM and inc["exitCode"] == 137 and inc["step"] == BLOCKED and "recoveredAt" in inc
    assert st["lastCheckpoint"]["step"] == 20

    # 5. the step-10 checkpoint in storage now is the recovered incarnation's complete rewrite
    assert committed_steps(store) == [10, 15, 20]  # keep=3
    manifest = json.loads(store.read_bytes(SLOW, layout.MANIFEST))
    assert manifest["step"] == SLOW and manifest["created_at"] > killed_at
