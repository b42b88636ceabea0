"""End to end on the real control plane, process nodes and MinIO: the built-in
trainer (python -m stoker.worker.train) is disturbed, the operator detects the
failure, records the incident with its cause, restarts the job as a new
incarnation from the last checkpoint, and the job ends Succeeded with final
parameters identical to an undisturbed run (the trainer's checksum)."""
from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import sys
import time

import pytest

from stoker.worker import journal
from tests.operator_tests.conftest import create_job, get_job, patch_job, wait_for, worker_pods

from . import faults as F
from .conftest import reference_run, reference_summary, trainer_config
from tests.recovery_tests.e2e import (acting_incidents, diagnostics, last_step, metrics_rows, pod_node, status,
                                      summary_of, trainer_pid)

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

SCRIPTS = pathlib.Path(__file__).with_name("scripts")
# Elastic and scale tests change the world size, which changes the fp32 reduction order:
# they are held to this relative loss tolerance per step against the undisturbed run at
# the final world size (observed ~1e-7), not to bit-identical parameters (README).
ELASTIC_LOSS_RTOL = 1e-5


def fault_rng() -> random.Random:
    """The random moments of a test's faults: seeded, the seed printed (STOKER_FAULT_SEED replays)."""
    seed = int(os.environ.get("STOKER_FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"fault seed: {seed} (replay with STOKER_FAULT_SEED={seed})")
    return random.Random(seed)


def stored_commits(s3, bucket: str, prefix: str) -> dict[int, float]:
    """Step -> when its ``COMMITTED`` marker was written, from the bucket (keep the checkpoints the test
    reads: retention deletes older ones)."""
    from stoker.common import layout
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            folder, _, name = o["Key"][len(prefix):].partition("/")
            step = layout.parse_step_dir(folder)
            if name == layout.COMMIT_MARKER and step is not None:
                out[step] = o["LastModified"].timestamp()
    return out


def assert_resumed_from_newest_commit(jdir: pathlib.Path, summary: dict,
                                      stored: dict[int, float] | None = None) -> list[dict]:
    """Every restart resumed from the newest checkpoint committed before it, and redid at
    most the steps computed since that commit (the step journal, not the trimmed metrics).
    ``stored`` (``stored_commits``): commits seen in the bucket too, for a coordinator killed
    between writing a ``COMMITTED`` marker and journalling it (``faults.recovery_facts``)."""
    facts = F.recovery_facts(journal.read(jdir), stored)
    assert facts, "no restart in the journal"
    for f in facts:
        assert f["resumed_committed"] and f["resumed"] == f["newest_commit"], f
        assert f["recomputed"] <= f["since_commit"], f
    assert summary["resumed_from"] == facts[-1]["resumed"]
    return facts


def at_a_random_moment(trainer_run, tmp_path: pathlib.Path, name: str, pool: dict, cfg: dict | None = None,
                       min_steps: int = 8, max_steps: int = 60, **kw):
    """A job of the built-in trainer (``cfg``: 150 steps unless given; 2 workers, step journal), waited for
    until a random moment inside a step of real training (not a trainer parked in a debug stall), after
    ``min_steps``-``max_steps`` steps: (run, the undisturbed run's summary, the journal folder)."""
    rng = fault_rng()
    cfg = cfg or trainer_config(150)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = tmp_path / "journal"
    run = trainer_run(name=name, cfg=cfg, node_selector=pool, journal_dir=jdir, **kw)
    moment = F.at_random_moment(rng, jdir, lambda: int(run.status().get("incarnation", 0)),
                                min_steps=min_steps, max_steps=max_steps, timeout=240)
    print("fault at", moment)
    return run, ref, jdir


def test_sigkilled_worker_is_restarted_from_the_checkpoint_and_ends_identical(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    # In-place restarts off: this is the path a failure takes when they are off or used up (a new
    # incarnation); the in-place path is test_e2e_inplace.py.
    run, ref, jdir = at_a_random_moment(trainer_run, tmp_path, "kill", recovery_pool,
                                        failure_policy={"inPlaceRestarts": 0})
    diag = run.diag
    assert F.signal_pid(F.trainer_pid("kill-worker-1-0"), signal.SIGKILL), diag()
    wait_for("job Succeeded", lambda: status(kube, namespace, "kill").get("phase") == "Succeeded",
             timeout=300, on_timeout=diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    [fact] = assert_resumed_from_newest_commit(jdir, summary)
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    st = status(kube, namespace, "kill")
    assert st["incarnation"] == 1
    assert st["restarts"] == {"userError": 0, "infrastructure": 1, "preemption": 0, "total": 1}
    [inc] = acting_incidents(st, fact["resumed"])  # (a save the kill caught is recorded, never used)
    assert inc["kind"] == "Restart" and inc["detectedCause"] == "WorkerKilled" and inc["cause"] == "infrastructure"
    # torchrun hands out ranks in rendezvous order: the rank is whatever that pod's heartbeats said
    assert inc["pod"] == "kill-worker-1-0" and inc["rank"] in (0, 1) and inc["exitCode"] == 137
    assert inc["step"] >= (fact["resumed"] or 0)  # None: killed before the first commit, restarted from scratch
    assert inc["detectionLatencySeconds"] >= 0 and "recoveredAt" in inc
    lc = st["lastCheckpoint"]
    assert lc["step"] == 150 and lc["uri"] == f"s3://{bucket}/kill/step-00000150" and lc["worldSize"] == 2


def fail_at_step_job(name: str, pool: dict, failure_policy: dict, **env: str) -> dict:
    """A 1-worker job of scripts/fail_at_step.py (FAIL_AT_STEP 3 unless ``env`` says otherwise)."""
    env = {"FAIL_AT_STEP": "3", **env}
    return {
        "apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"replicas": 1,
                 "template": {"spec": {"containers": [{"name": "trainer", "image": "local/python",
                                                       "command": [sys.executable, str(SCRIPTS / "fail_at_step.py")],
                                                       "env": [{"name": k, "value": v} for k, v in env.items()]}],
                                       "terminationGracePeriodSeconds": 5, "nodeSelector": pool}},
                 "failurePolicy": {"backoffSeconds": 0, **failure_policy}},
    }


def test_the_same_error_at_the_same_step_fails_the_job_after_its_budget_with_the_reason(
        cluster, kube, namespace, recovery_pool, heartbeat_operator):
    op = heartbeat_operator()
    # each failure restarts the job as a new incarnation (not in place: test_e2e_inplace.py)
    create_job(kube, namespace, fail_at_step_job("bug", recovery_pool, {"maxRestarts": 2, "inPlaceRestarts": 0}))
    wait_for("job Failed", lambda: status(kube, namespace, "bug").get("phase") == "Failed", timeout=300,
             on_timeout=diagnostics(kube, namespace, "bug", op))
    st = status(kube, namespace, "bug")
    assert st["reason"] == "RepeatedUserError"
    assert "3 times in a row" in st["message"] and "maxRestarts=2" in st["message"]
    assert "loss is NaN at step 3" in st["message"]  # the last error lines
    assert st["restarts"]["userError"] == 2 and st["incarnation"] == 2
    incs = st["incidents"]
    assert [i["kind"] for i in incs] == ["Restart", "Restart", "JobFailed"]
    assert [i["detectedCause"] for i in incs] == ["WorkerCrashed", "WorkerCrashed", "UserError"]
    assert {i["step"] for i in incs} == {2} and {i["exitCode"] for i in incs} == {1}
    events = cluster.kubectl("describe", "tj", "bug", "-n", namespace).stdout.split("Events:")[-1]
    assert "RepeatedUserError" in events


def test_lost_node_is_detected_and_the_job_resumes_on_other_nodes(
        cluster, kube, namespace, bucket, own_nodes, trainer_run, tmp_path):
    rng = fault_rng()
    selector, names = own_nodes(3)
    cfg = trainer_config(150)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = tmp_path / "journal"
    # Generous heartbeat/progress timeouts: the node must be what reveals it (its ranks all quiet and its kubelet
    # silent, test_e2e_fast_detection.py, or its NotReady condition), not a silence timeout.
    run = trainer_run(name="lose", cfg=cfg, node_selector=selector, journal_dir=jdir, failure_policy={"heartbeatTimeoutSeconds": 300, "progressTimeoutSeconds": 300})
    diag = run.diag
    lost = wait_for("worker 1 on a node", lambda: pod_node(kube, namespace, "lose-worker-1-0"), timeout=120,
                    on_timeout=diag)
    moment = F.at_random_moment(rng, jdir, lambda: int(status(kube, namespace, "lose").get("incarnation", 0)),
                                min_steps=8, max_steps=60, timeout=240)
    print("fault at", moment)
    assert lost in names
    cluster.stop_process_node(lost, sig=signal.SIGKILL)  # the machine is gone (its pods die with it)
    wait_for("job Succeeded", lambda: status(kube, namespace, "lose").get("phase") == "Succeeded",
             timeout=300, on_timeout=diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    [fact] = assert_resumed_from_newest_commit(jdir, summary)
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    st = status(kube, namespace, "lose")
    [inc] = acting_incidents(st, fact["resumed"])
    assert inc["detectedCause"] == "NodeLost" and inc["cause"] == "infrastructure" and inc["node"] == lost
    assert st["restarts"]["userError"] == 0 and st["incarnation"] == 1
    pods = worker_pods(kube, namespace, "lose")
    # replacements avoided the lost node; the pod stuck Terminating there was force-removed
    assert {p["metadata"]["name"] for p in pods} == {"lose-worker-0-1", "lose-worker-1-1"}
    assert lost not in {p["spec"]["nodeName"] for p in pods}
    [term] = pods[0]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "metadata.name", "operator": "NotIn", "values": [lost]} in term["preference"]["matchFields"]


def test_sigstopped_worker_is_caught_as_frozen_with_the_default_policy(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    cfg = trainer_config(300)
    ref = reference_summary(tmp_path, cfg, 2)
    run = trainer_run(name="hang", cfg=cfg, node_selector=recovery_pool)
    diag = run.diag
    wait_for("training past step 15", lambda: last_step(tmp_path / "job" / "metrics.jsonl") >= 15, timeout=240,
             interval=0.05, on_timeout=diag)
    pid = trainer_pid("hang-worker-1-0")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive but stuck: its peers wait in the all-reduce
    stopped_at = time.time()
    try:
        wait_for("job Succeeded", lambda: status(kube, namespace, "hang").get("phase") == "Succeeded",
                 timeout=400, on_timeout=diag)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 300 and summary["checksum"] == ref["checksum"]
    st = status(kube, namespace, "hang")
    [inc] = st["incidents"]
    assert inc["detectedCause"] == "HeartbeatLost" and inc["cause"] == "infrastructure"
    assert "while heartbeats kept arriving" in inc["message"], inc   # frozen, not the 60 s silence timeout
    assert inc["pod"] == "hang-worker-1-0"  # the stopped one, told apart by its silence
    assert st["restarts"]["userError"] == 0 and st["incarnation"] == 1
    assert stopped_at > 0


def test_a_step_stuck_while_every_rank_heartbeats_is_a_hang_caught_by_the_progress_timeout(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    # both ranks wait 10 min for the batch of step 20 (debug.data_pauses; a fresh run only) while
    # their heartbeats go on: nobody is frozen, the step is stuck
    cfg = trainer_config(60, data_pauses="20:600")
    ref = reference_summary(tmp_path, cfg, 2)
    run = trainer_run(name="stuck", cfg=cfg, node_selector=recovery_pool, failure_policy={"progressTimeoutSeconds": 5})
    run.wait_phase("Succeeded", timeout=400)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 60 and summary["checksum"] == ref["checksum"] and summary["resumed_from"] == 15
    st = status(kube, namespace, "stuck")
    [inc] = st["incidents"]
    assert inc["detectedCause"] == "Hang" and "progress timeout" in inc["message"], inc
    assert st["incarnation"] == 1


def test_operator_killed_twice_during_the_job_still_ends_identical(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    cfg = trainer_config(20, stall_after_step=10)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = tmp_path / "journal"
    run = trainer_run(name="opkill", cfg=cfg, node_selector=recovery_pool, journal_dir=jdir)
    op, diag = run.op, run.diag
    wait_for("checkpoint 10 in status", lambda: (status(kube, namespace, "opkill").get("lastCheckpoint") or {})
             .get("step") == 10, timeout=240, on_timeout=diag)
    op.kill()                 # 1: mid-training (the rendezvous store and heartbeat service go with it)
    op.start().wait_ready()
    wait_for("a restart decided by the new operator", lambda: status(kube, namespace, "opkill").get("incarnation", 0) >= 1,
             timeout=180, on_timeout=diag)
    op.kill()                 # 2: right after the restart decision, before or while the new pods start
    op.start().wait_ready()
    wait_for("job Succeeded", lambda: status(kube, namespace, "opkill").get("phase") == "Succeeded",
             timeout=300, on_timeout=diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 20 and summary["checksum"] == ref["checksum"]
    # where it resumed: every restored process took step 10 (committed before the first kill,
    # the newest there is: the stall holds the workers right after it), never an older one
    # or none, and steps 11-20 were computed exactly once
    assert summary["resumed_from"] == 10
    resumed = F.resumed_steps(jdir)
    assert resumed and set(resumed) == {10}, resumed
    assert F.computed_steps(jdir) == list(range(1, 21))
    st = status(kube, namespace, "opkill")
    assert st["restarts"]["userError"] == 0
    assert st["incidents"] and {i["cause"] for i in st["incidents"]} == {"infrastructure"}


def test_on_call_checkpoint_request_commits_a_checkpoint_at_once(
        cluster, kube, namespace, bucket, s3, recovery_pool, trainer_run, tmp_path):
    from stoker.common import labels as L
    from stoker.common import layout

    cfg = trainer_config(600)  # long enough that the request always arrives mid-run

    def edit(body):
        body["spec"]["checkpoint"]["intervalSteps"] = 1000  # only the request (and the end) saves

    run = trainer_run(name="ask", cfg=cfg, node_selector=recovery_pool, edit=edit)
    diag = run.diag
    wait_for("training past step 15", lambda: last_step(tmp_path / "job" / "metrics.jsonl") >= 15, timeout=240,
             interval=0.05, on_timeout=diag)
    rid = "20260101T000000Z-a1b2c3"
    kube.custom.patch_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", "ask",
                                               {"metadata": {"annotations": {L.CHECKPOINT_REQUEST: rid}}})
    wait_for("job Succeeded", lambda: status(kube, namespace, "ask").get("phase") == "Succeeded",
             timeout=300, on_timeout=diag)
    job = get_job(kube, namespace, "ask")
    assert job["metadata"]["annotations"][L.CHECKPOINT_REQUEST_HANDLED] == rid
    assert job["status"]["requests"]["checkpoint"] == rid
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ask/").get("Contents", [])]
    steps = {layout.parse_step_dir(k.split("/")[1]) for k in keys} - {None}
    assert 600 in steps and any(15 <= s < 600 for s in steps), steps  # the requested one, mid-run
    assert job["status"]["restarts"]["total"] == 0


def test_scale_down_drains_with_a_checkpoint_so_no_step_is_computed_twice_then_scales_back(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    # the stall keeps the world-2 incarnation at a known step until we scale back up; it is far
    # enough out that the scale-down request always arrives before it
    cfg = trainer_config(450, stall_after_step=400)
    cfg["train"]["global_batch"] = 12  # divisible by 2 and 3 workers x micro_batch 2
    jdir = tmp_path / "journal"

    def edit(body):
        body["spec"].update(minReplicas=2, maxReplicas=3)

    run = trainer_run(name="scale", cfg=cfg, replicas=3, node_selector=recovery_pool, journal_dir=jdir, edit=edit)
    out, diag = run.out, run.diag
    wait_for("training at world size 3", lambda: any(r.get("world_size") == 3 and r["step"] >= 15
                                                     for r in metrics_rows(out)), timeout=300, interval=0.05,
             on_timeout=diag)
    patch_job(kube, namespace, "scale", {"spec": {"replicas": 2}})
    drained = wait_for("the drained incarnation's summary", lambda: (s := summary_of(out)) and
                       s.get("stopped_early") and s, timeout=240, on_timeout=diag)
    stop_step = drained["step"]
    assert drained["world_size"] == 3
    wait_for("checkpoint 400 at world size 2", lambda: (status(kube, namespace, "scale").get("lastCheckpoint") or {})
             .get("step") == 400, timeout=400, on_timeout=diag)
    patch_job(kube, namespace, "scale", {"spec": {"replicas": 3}})
    wait_for("job Succeeded", lambda: status(kube, namespace, "scale").get("phase") == "Succeeded", timeout=300,
             on_timeout=diag)
    final = summary_of(out)
    assert final["step"] == 450 and final["world_size"] == 3
    # The world-2 incarnation resumed exactly at the drain checkpoint, and every step was
    # computed exactly once: rank 0's append-only journal over all its processes (the
    # metrics file is trimmed on resume and would hide a step computed twice).
    resumed = F.resumed_steps(jdir)
    assert resumed[0] == stop_step and set(resumed[1:]) == {400}, resumed
    assert F.computed_steps(jdir) == list(range(1, 451))
    # Not bit-identical: a world size change reorders fp32 reductions. What it proves is
    # the stated tolerance (README): every step's loss within ELASTIC_LOSS_RTOL of the
    # undisturbed world-3 run; lost optimizer state or a wrong data position is off by > 1e-3.
    want = {r["step"]: r["loss"] for r in metrics_rows(reference_run(tmp_path, cfg, 3))}
    have = {r["step"]: r["loss"] for r in metrics_rows(out)}
    assert sorted(have) == list(range(1, 451))
    for step, loss in have.items():
        assert loss == pytest.approx(want[step], rel=ELASTIC_LOSS_RTOL), step
    st = status(kube, namespace, "scale")
    assert st["restarts"]["userError"] == 0 and st["incarnation"] == 1
    events = cluster.kubectl("describe", "tj", "scale", "-n", namespace).stdout.split("Events:")[-1]
    assert "Draining" in events and "Drained" in events


def test_s3_down_for_20s_across_checkpoints_costs_no_restart_and_ends_identical(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    cfg = trainer_config(300)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = tmp_path / "journal"
    run = trainer_run(name="s3out", cfg=cfg, node_selector=recovery_pool, journal_dir=jdir)
    diag = run.diag
    wait_for("training past step 15", lambda: last_step(tmp_path / "job" / "metrics.jsonl") >= 15, timeout=240,
             interval=0.05, on_timeout=diag)
    cluster.stop_s3()
    down_at = time.time()
    try:
        time.sleep(20)  # saves retry (and the step waits for them) while S3 is away
    finally:
        up_at = time.time()
        cluster.start_s3()
    wait_for("job Succeeded", lambda: status(kube, namespace, "s3out").get("phase") == "Succeeded",
             timeout=400, on_timeout=diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 300 and summary["checksum"] == ref["checksum"]
    st = status(kube, namespace, "s3out")
    # Not a hang, not a failure: the waits were saves retrying against storage.
    assert st["restarts"]["total"] == 0 and st["incarnation"] == 0
    assert all(i["kind"] == "CheckpointFailed" for i in st.get("incidents") or [])
    # ... and the outage really hit a save: one was in flight while S3 was away (begun before
    # it came back, its outcome after it went), not only steps between saves
    assert F.saves_overlapping(journal.read(jdir), down_at, up_at, interval=5, finished_only=True), \
        "no save overlapped the outage"
    assert st["lastCheckpoint"]["step"] == 300
