"""In-place restarts end to end (issue 12): a trainer SIGKILLed at a random moment of real
training is started again inside its pod, every rank with it from the newest committed
checkpoint, without new pods or a new incarnation; the operator records the incident from
the launcher's report. When a pod's in-place restarts are used up, the job restarts as a new
incarnation. Process nodes, MinIO, the heartbeat operator."""
from __future__ import annotations

import json
import signal
import time

import pytest

from stoker.worker import journal
from tests.operator_tests.conftest import create_job, wait_for, worker_pods

from . import faults as F
from .e2e import acting_incidents, assert_restored_from_memory, diagnostics, status
from .test_e2e_recovery import at_a_random_moment, fail_at_step_job

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def test_a_sigkilled_trainer_restarts_in_place_in_the_same_pods_and_ends_identical(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    run, ref, jdir = at_a_random_moment(trainer_run, tmp_path, "inplace", recovery_pool)
    diag = run.diag
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(kube, namespace, "inplace")}
    assert sorted(uids) == ["inplace-worker-0-0", "inplace-worker-1-0"], uids
    pid = F.trainer_pid("inplace-worker-1-0")
    assert F.signal_pid(pid, signal.SIGKILL), diag()
    wait_for("job Succeeded", lambda: run.status().get("phase") == "Succeeded", timeout=300, on_timeout=diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    # every rank resumed from the newest checkpoint committed before the kill, redoing at most the steps since
    # the restarted processes are a generation of their own (their world), though the incarnation stays
    [fact] = F.recovery_facts(F.with_generations(journal.read(jdir)), key="generation")
    assert fact["generation"] == 1 and fact["incarnation"] == 0, fact
    assert fact["resumed_committed"] and fact["resumed"] == fact["newest_commit"], fact
    assert fact["recomputed"] <= fact["since_commit"], fact
    # the same pods (uids), the same incarnation
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(kube, namespace, "inplace")}
    assert after == uids
    st = run.status()
    assert st["incarnation"] == 0
    assert st["restarts"] == {"userError": 0, "infrastructure": 1, "preemption": 0, "total": 1}, st.get("incidents")
    [inc] = acting_incidents(st, fact["resumed"])
    assert inc["kind"] == "Restart" and inc["inPlace"] is True and inc["incarnation"] == 0
    assert inc["detectedCause"] == "WorkerKilled" and inc["cause"] == "infrastructure" and inc["exitCode"] == 137
    assert inc["pod"] == "inplace-worker-1-0" and "inplace-worker-1-0#1" in inc["workerRestarts"]
    assert 0 <= inc["detectionLatencySeconds"] < 5 and inc["timeToRecoverSeconds"] > 0
    print("in-place incident:", json.dumps(inc))


def test_a_trainer_frozen_in_its_in_place_restart_is_caught_before_the_in_place_deadline(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    """Chaos (seed 708224917): a trainer killed, its peer's new trainer SIGSTOPped as the in-place
    restart started it, before its first message: the job waited out the 120 s in-place deadline.
    Here worker 0's idle warm trainer (the process its next restart is handed to) is SIGSTOPped,
    then worker 1's trainer SIGKILLed at a random moment: worker 0's restarted trainer starts
    frozen while worker 1's speaks again. The rank left behind is caught (HeartbeatLost, the
    relaunch lag) and the job restarts as a new incarnation, not InPlaceRestartTimedOut."""
    run, ref, _ = at_a_random_moment(trainer_run, tmp_path, "frozen", recovery_pool)
    warm = wait_for("worker 0's warm trainer", lambda: F.idle_warm_pid("frozen-worker-0-0"), timeout=60,
                    on_timeout=run.diag)
    assert F.signal_pid(warm, signal.SIGSTOP) and F.signal_pid(F.trainer_pid("frozen-worker-1-0"), signal.SIGKILL)
    wait_for("job Succeeded", lambda: run.status().get("phase") == "Succeeded", timeout=300, on_timeout=run.diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    st = run.status()
    incs = [i for i in st["incidents"] if i["kind"] == "Restart"]
    assert [(i["detectedCause"], bool(i.get("inPlace")), i["pod"]) for i in incs] == [
        ("WorkerKilled", True, "frozen-worker-1-0"), ("HeartbeatLost", False, "frozen-worker-0-0")], incs
    assert "restarted in place with its peers" in incs[1]["message"], incs[1]
    assert st["incarnation"] == 1 and st["restarts"]["total"] == 2, st["restarts"]
    print("left behind:", incs[1]["message"])


def memory_every(n: int):
    def edit(body: dict) -> None:
        body["spec"]["checkpoint"]["memoryIntervalSteps"] = n
    return edit


def test_with_the_in_memory_tier_a_sigkilled_trainer_resumes_past_the_last_commit_losing_at_most_a_step(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    """spec.checkpoint.memoryIntervalSteps: 1 (S3 every 5 steps): every rank restarted in place
    resumes from the newest step all ranks hold in their pods' memory, not from S3, so the kill
    at a random moment costs at most the step it interrupted, not the steps since the last commit."""
    run, ref, jdir = at_a_random_moment(trainer_run, tmp_path, "inmem", recovery_pool, edit=memory_every(1))
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(kube, namespace, "inmem")}
    t0 = time.time()
    assert F.signal_pid(F.trainer_pid("inmem-worker-1-0"), signal.SIGKILL), run.diag()
    wait_for("job Succeeded", lambda: run.status().get("phase") == "Succeeded", timeout=300, on_timeout=run.diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    assert_restored_from_memory(jdir, t0)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(kube, namespace, "inmem")} == uids
    st = run.status()
    assert st["incarnation"] == 0 and st["restarts"]["total"] == 1


def test_when_a_pods_in_place_restarts_are_used_up_the_job_restarts_as_a_new_incarnation(
        cluster, kube, namespace, recovery_pool, heartbeat_operator):
    """A trainer that crashes at step 2 every time in incarnation 0: restarted in place once
    (inPlaceRestarts: 1), then its pod fails and the operator restarts the job as incarnation 1,
    where it does not crash."""
    op = heartbeat_operator()
    create_job(kube, namespace, fail_at_step_job("again", recovery_pool, {"maxRestarts": 5, "inPlaceRestarts": 1},
                                                 FAIL_IN_INCARNATION="0"))
    diag = diagnostics(kube, namespace, "again", op)
    wait_for("job Succeeded", lambda: status(kube, namespace, "again").get("phase") == "Succeeded", timeout=300,
             on_timeout=diag)
    st = status(kube, namespace, "again")
    incs = [i for i in st["incidents"] if i["kind"] == "Restart"]
    assert [(i["incarnation"], bool(i.get("inPlace"))) for i in incs] == [(0, True), (0, False)], incs
    assert [i["detectedCause"] for i in incs] == ["WorkerCrashed", "WorkerCrashed"]
    assert all(i["exitCode"] == 1 and i["step"] == 2 for i in incs)
    assert incs[0]["workerRestarts"] == ["again-worker-0-0#1"]
    assert st["incarnation"] == 1 and st["restarts"]["userError"] == 2 and st["restarts"]["total"] == 2
    assert [p["metadata"]["name"] for p in worker_pods(kube, namespace, "again")] == ["again-worker-0-1"]
