"""End to end (issue 12): a lost node seen from the heartbeat stream before its NotReady, and a
stuck collective (every rank alive, heartbeating, waiting in a collective) caught as such with
the default failure policy; each job recovers and ends identical to an undisturbed run. No
timing is asserted here (bench/bench_recovery.py measures it)."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from stoker.worker import journal

from tests.operator_tests.conftest import wait_for
from tests.recovery_tests.e2e import acting_incidents, pod_node, status

from . import faults as F
from .conftest import reference_summary, trainer_config
from .test_e2e_recovery import assert_resumed_from_newest_commit, at_a_random_moment, stored_commits

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]
GPU = "nvidia.com/gpu"


def test_a_lost_node_is_seen_from_the_heartbeat_stream_and_the_job_recovers_elsewhere(
        cluster, kube, namespace, bucket, s3, own_nodes, trainer_run, tmp_path):
    selector, _ = own_nodes(3)

    def keep_all(body):   # every COMMITTED marker stays in the bucket: a witness beside the journal
        body["spec"]["checkpoint"]["keep"] = 100
    # the default failure policy: the heartbeat timeout (60 s) is not what catches it
    run, ref, jdir = at_a_random_moment(trainer_run, tmp_path, "gone", selector, trainer_config(120), edit=keep_all)
    lost = pod_node(kube, namespace, "gone-worker-1-0")
    assert lost, run.diag()
    cluster.stop_process_node(lost, sig=signal.SIGKILL)  # the machine is gone (its pods die with it)
    inc = wait_for("the restart's incident", lambda: next(
        (i for i in status(kube, namespace, "gone").get("incidents") or [] if i["kind"] == "Restart"), None),
        timeout=120, on_timeout=run.diag)
    # named node loss, and found from the heartbeats: the Node was still Ready when it was decided
    assert inc["detectedCause"] == "NodeLost" and inc["node"] == lost and inc["cause"] == "infrastructure", inc
    assert "went quiet at once" in inc["message"] and "kubelet does not answer" in inc["message"], inc
    run.wait_phase("Succeeded", timeout=300)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    # local CI (seed 767289307): the restart resumed from step 10, committed in the bucket, which the old
    # coordinator never journalled (its last record: step 15); the bucket's markers are a second witness
    [fact] = assert_resumed_from_newest_commit(jdir, summary, stored_commits(s3, bucket, "gone/"))
    assert summary["step"] == 120 and summary["checksum"] == ref["checksum"]
    st = status(kube, namespace, "gone")
    assert len(acting_incidents(st, fact["resumed"])) == 1 and st["incarnation"] == 1
    assert st["restarts"]["userError"] == 0


def test_a_stuck_collective_is_caught_as_such_with_the_default_policy_and_recovered(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    run, ref, jdir = at_a_random_moment(trainer_run, tmp_path, "wedge", recovery_pool,
                              trainer_config(120, stuck_collective_on_signal=True))
    # its next collective never completes: both ranks wait in it, alive and heartbeating
    assert F.signal_pid(F.trainer_pid("wedge-worker-1-0"), signal.SIGUSR1), run.diag()
    run.wait_phase("Succeeded", timeout=300)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    [fact] = assert_resumed_from_newest_commit(jdir, summary)
    assert summary["step"] == 120 and summary["checksum"] == ref["checksum"]
    st = status(kube, namespace, "wedge")
    [inc] = acting_incidents(st, fact["resumed"])
    assert inc["detectedCause"] == "CollectiveStuck" and inc["cause"] == "infrastructure", inc
    assert "waited in a collective" in inc["message"], inc   # not the progress timeout's Hang
    assert st["incarnation"] == 1 and st["restarts"]["userError"] == 0


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def objects(s3, bucket: str, prefix: str) -> dict[str, tuple]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["ETag"], o["LastModified"], o["Size"])
    return out


def body(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_partitioned_node_that_comes_back_is_fenced_it_commits_and_joins_nothing(
        cluster, kube, namespace, bucket, s3, gpu_nodes, trainer_run, tmp_path):
    selector, add_nodes = gpu_nodes
    add_nodes(3)   # one worker per node (one GPU each), and room for the replacement
    # rank 0 (the checkpoint coordinator) holds the commit of step 20 back for 20 s: it is on its way
    # to commit when its node is frozen, and gets there only when the node comes back
    cfg = trainer_config(80, slow_checkpoint_at_step=20, slow_checkpoint_seconds=20)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = tmp_path / "journal"

    def edit(body):
        body["spec"]["checkpoint"]["keep"] = 100  # step 20's folder stays: an unfenced commit would go through
        body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: 1}}

    run = trainer_run(name="split", cfg=cfg, node_selector=selector, journal_dir=jdir, edit=edit)
    # step 20's shards and DCP metadata are stored: rank 0 now sleeps before committing it
    wait_for("step 20's shards", lambda: "split/step-00000020/.metadata" in objects(s3, bucket, "split/"),
             timeout=300, interval=0.1, on_timeout=run.diag)
    [lead] = [b for b in run.status().get("workerHeartbeats") or [] if b["rank"] == 0]
    agent, *workers = cluster.node_processes(lead["node"])
    signal_all([agent, *workers], signal.SIGSTOP)   # the node is partitioned: alive, silent
    try:
        run.wait_phase("Succeeded", timeout=400)  # recovered on the other nodes, incarnation 1
        done = objects(s3, bucket, "split/")
        thawed_at = time.time()
        # the partition heals: its workers run on (the old coordinator wakes and goes to commit step 20)
        # for 10 s before its kubelet catches up and kills the pods deleted meanwhile
        signal_all(workers, signal.SIGCONT)
        time.sleep(10)
    finally:
        signal_all([*workers, agent], signal.SIGCONT)
    st = run.status()
    assert st["incarnation"] == 1 and st["phase"] == "Succeeded", st
    # nothing in the job's checkpoints changed after the old worker came back
    assert objects(s3, bucket, "split/") == done
    assert body(s3, bucket, "split/FENCE") == {"incarnation": 1}
    manifest = body(s3, bucket, "split/step-00000020/stoker.json")
    assert manifest["incarnation"] == 1, manifest      # step 20 was committed by the replacement
    old_commits = [r for r in journal.read(jdir) if r["event"] == "committed" and r["incarnation"] == 0
                   and r["t"] >= thawed_at]
    assert old_commits == []
    # it joined nothing: every heartbeat after the heal is the replacement's, and the job ended identical
    assert {b["pod"] for b in run.status().get("workerHeartbeats") or []} <= {"split-worker-0-1", "split-worker-1-1"}
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 80 and summary["checksum"] == ref["checksum"] and summary["resumed_from"] is not None
