"""Frozen processes the heartbeats alone did not show, end to end (process nodes, MinIO, the
heartbeat operator; faults at random moments of real training): a pod's launcher SIGSTOPped (its
keepalives stop: heartbeat_checks.frozen_launcher), and every trainer of a job SIGSTOPped at once
(the launchers' keepalives are the messages the frozen rule compares with). Both were found by
bench/chaos.py (seed 708224917): an in-place restart waited 120 s for a stopped launcher, and two
stopped trainers were caught only by the progress timeout's 30 s floor."""
from __future__ import annotations

import json
import signal

import pytest

from tests.operator_tests.conftest import wait_for

from . import faults as F
from .test_e2e_recovery import at_a_random_moment

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def restarts_of(st: dict) -> list[dict]:
    return [i for i in st.get("incidents") or [] if i["kind"] in ("Restart", "Replace")]


def stopped_launcher(run, ref, tmp_path, name: str) -> dict:
    """SIGSTOP worker 1's launcher; the job must still end Succeeded, identical, after one restart."""
    assert F.signal_pid(F.launcher_pid(f"{name}-worker-1-0"), signal.SIGSTOP), run.diag()
    wait_for("job Succeeded", lambda: run.status().get("phase") == "Succeeded", timeout=300, on_timeout=run.diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    st = run.status()
    [inc] = restarts_of(st)
    assert (inc["detectedCause"], bool(inc.get("inPlace")), inc["pod"]) == \
        ("HeartbeatLost", False, f"{name}-worker-1-0"), inc
    assert f"the launcher of worker pod {name}-worker-1-0 went silent" in inc["message"], inc
    assert st["incarnation"] == 1 and st["restarts"]["total"] == 1, st["restarts"]
    print("frozen launcher:", inc["message"], inc.get("detectionLatencySeconds"))
    return inc


def test_a_stopped_launcher_is_caught_and_the_job_restarts_as_a_new_incarnation(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    run, ref, _ = at_a_random_moment(trainer_run, tmp_path, "lstop", recovery_pool)
    stopped_launcher(run, ref, tmp_path, "lstop")


def test_a_launcher_stopped_in_the_last_steps_does_not_leave_the_job_running_for_ever(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    """CI (seed 1057939396): stopped 2 s before the last step, the launcher was not judged once its
    trainers finished, and its pod (the job with it) stayed Running. Now it is, after LAUNCHER_EXIT_S,
    and the new incarnation resumes from the final checkpoint."""
    run, ref, _ = at_a_random_moment(trainer_run, tmp_path, "lend", recovery_pool, min_steps=145, max_steps=149)
    inc = stopped_launcher(run, ref, tmp_path, "lend")
    assert "frozen after 30s" in inc["message"], inc


def test_every_trainer_stopped_at_once_is_caught_as_frozen_not_by_the_progress_timeout(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    run, ref, _ = at_a_random_moment(trainer_run, tmp_path, "bstop", recovery_pool)
    pids = [F.trainer_pid(f"bstop-worker-{i}-0") for i in (0, 1)]
    assert all(F.signal_pid(p, signal.SIGSTOP) for p in pids), (pids, run.diag())
    wait_for("job Succeeded", lambda: run.status().get("phase") == "Succeeded", timeout=300, on_timeout=run.diag)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"]
    st = run.status()
    [inc] = restarts_of(st)
    assert inc["detectedCause"] == "HeartbeatLost" and "while heartbeats kept arriving (frozen" in inc["message"], inc
    assert st["incarnation"] == 1, st
    print("both trainers stopped:", inc["message"], inc.get("detectionLatencySeconds"))
