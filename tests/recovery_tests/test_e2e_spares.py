"""End to end (issue 12): a hot spare (spec.spares) takes a lost node's place and the lost rank's state
comes from its peer copy in memory. A fixed-size job of 2 workers and 1 spare on process nodes with one
GPU each (one pod per node), the in-memory tier on every step (S3 every 5); the node of a worker is
killed at a random moment of training: the other worker restarts in place, the spare takes the lost
rank, both restore from memory (the lost rank's snapshot was copied to the survivor's pod), no new
incarnation and no new pod for the survivors, a new spare is started, and the job ends identical to an
undisturbed run. No timing is asserted here (bench/bench_recovery.py measures it)."""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.operator_tests.conftest import wait_for, worker_pods
from tests.recovery_tests.e2e import acting_incidents, assert_restored_from_memory, pod_node, status

from .conftest import trainer_config
from .test_e2e_recovery import at_a_random_moment

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]
GPU = "nvidia.com/gpu"


def pods_by_name(kube, namespace: str, job: str) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in worker_pods(kube, namespace, job)}


def spare_job(body: dict) -> None:
    body["spec"]["spares"] = 1
    body["spec"]["checkpoint"]["memoryIntervalSteps"] = 1
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: 1}}


def test_a_hot_spare_takes_a_lost_nodes_place_and_the_lost_rank_comes_back_from_its_peer_copy(
        cluster, kube, namespace, bucket, gpu_nodes, trainer_run, tmp_path):
    selector, add_nodes = gpu_nodes
    nodes = add_nodes(4)   # 2 workers, 1 spare, and room for the spare started after the loss
    run, ref, jdir = at_a_random_moment(trainer_run, tmp_path, "hot", selector, trainer_config(120), edit=spare_job)
    before = pods_by_name(kube, namespace, "hot")
    assert len(before) == 3 and len({p["spec"]["nodeName"] for p in before.values()}) == 3, run.diag()

    def two_ranks():
        beats = status(kube, namespace, "hot").get("workerHeartbeats") or []
        return len({b["pod"] for b in beats}) == 2 and beats

    beats = wait_for("heartbeats of 2 ranks", two_ranks, timeout=60, on_timeout=run.diag)
    workers = {b["pod"] for b in beats}
    [spare] = set(before) - workers    # the pod with no trainer: it waits outside the round
    victim = next(b["pod"] for b in beats if b["rank"] == 1)
    lost = pod_node(kube, namespace, victim)
    assert lost in nodes, run.diag()
    t0 = time.time()
    cluster.stop_process_node(lost, sig=signal.SIGKILL)  # the machine is gone (its pods die with it)

    inc = wait_for("the Replace incident", lambda: next(
        (i for i in status(kube, namespace, "hot").get("incidents") or [] if i["kind"] == "Replace"), None),
        timeout=120, on_timeout=run.diag)
    assert inc["detectedCause"] == "NodeLost" and inc["node"] == lost and inc["pod"] == victim, inc
    assert inc["spare"] and inc["inPlace"] and inc["cause"] == "infrastructure", inc
    run.wait_phase("Succeeded", timeout=300)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 120 and summary["checksum"] == ref["checksum"]
    # both ranks of the new round restored the same step from memory, not from S3: the lost rank's snapshot
    # from the copy on the survivor's pod; at most the step the loss interrupted is computed again
    at, restored, committed = assert_restored_from_memory(jdir, t0)
    assert {r["pod"] for r in restored} == {spare, *(workers - {victim})}, restored
    st = status(kube, namespace, "hot")
    assert st["incarnation"] == 0 and st["restarts"]["userError"] == 0, st
    assert [i["kind"] for i in acting_incidents(st, committed)] == ["Replace"], st["incidents"]
    # the spare trained in the lost worker's place (its trainer heartbeated), in the same pod
    after = pods_by_name(kube, namespace, "hot")
    assert spare in {b["pod"] for b in st.get("workerHeartbeats") or []}, st.get("workerHeartbeats")
    for name in set(before) - {victim}:
        if name in after:
            assert after[name]["metadata"]["uid"] == before[name]["metadata"]["uid"], name
