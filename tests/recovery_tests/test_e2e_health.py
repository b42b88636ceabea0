"""End to end (operator, process nodes, S3 checkpoints): training health.

A job whose data holds a poisoned window (``debug.poison_samples``: the loss of the batch
drawn from it becomes NaN) is rolled back by its workers to the newest committed checkpoint
before the anomaly, skips the window and ends Succeeded, bit-identical to an undisturbed run
that skipped the same window; the operator records the anomaly once, as an incident naming
the step, the statistic, the checkpoint rolled back to and the batches skipped, an Event
and status.health. A job that diverges every time fails with the reason after
spec.health.maxRollbacks, without a restart.
"""
from __future__ import annotations

import re

import pytest

from tests.operator_tests.conftest import patch_job, wait_for, worker_pods

from .conftest import reference_summary, trainer_config
from .e2e import status, summary_of

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

BATCH = 8                              # trainer_config's global batch
POISON_STEP = 23                       # its batch: samples [22*8, 23*8)
WINDOW = f"{(POISON_STEP - 1) * BATCH}:{POISON_STEP * BATCH}"


def anomalies(st: dict) -> list[dict]:
    return [i for i in st.get("incidents") or [] if i["kind"] == "Anomaly"]


def stoker_top(cluster, namespace: str, capsys) -> str:
    from stoker.cli.main import main

    capsys.readouterr()
    assert main(["top", "--once", "--kubeconfig", str(cluster.kubeconfig), "-n", namespace]) == 0
    return capsys.readouterr().out


def test_a_poisoned_window_is_rolled_back_skipped_and_the_job_ends_identical_to_a_run_that_skipped_it(
        cluster, kube, namespace, recovery_pool, trainer_run, tmp_path, capsys):
    cfg = trainer_config(60, poison_samples=WINDOW)
    run = trainer_run(name="poison", cfg=cfg, node_selector=recovery_pool)
    run.wait_phase("Succeeded", timeout=400)
    st = run.status()
    [inc] = anomalies(st)
    assert inc["step"] == POISON_STEP and inc["detectedCause"] == "NonFinite" and inc["cause"] == "none"
    assert inc["anomaly"] == {"kind": "NonFinite", "statistic": "loss=nan", "action": "rollback", "rollbacks": 1,
                              "rolledBackTo": 20, "batchesSkipped": 1, "skipFrom": (POISON_STEP - 1) * BATCH,
                              "skipTo": POISON_STEP * BATCH}, inc
    assert "rolled back to the checkpoint of step 20 and skipped 1 batch(es)" in inc["message"]
    assert st["health"]["skip"] == WINDOW and st["health"]["rollbacks"] == 1 and st["health"]["anomalies"] == 1
    assert st["restarts"]["total"] == 0 and st["incarnation"] == 0   # handled inside the workers
    [cond] = [c for c in st["conditions"] if c["type"] == "TrainingAnomaly"]
    assert cond["status"] == "True" and cond["reason"] == "NonFinite", cond
    events = cluster.kubectl("describe", "tj", "poison", "-n", namespace).stdout.split("Events:")[-1]
    assert "TrainingRolledBack" in events, events
    # the training picture the workers sent is in status, and `stoker top` shows it
    assert {"loss", "gradNorm", "learningRate", "dataWaitFraction", "collectiveWaitFraction"} <= set(st["metrics"]), \
        st["metrics"]
    top = stoker_top(cluster, namespace, capsys)
    assert re.search(r"loss [0-9.]+  grad-norm [0-9.]+  lr [0-9.e-]+  data-wait \d+%  comm-wait \d+%  anomalies 1 "
                     r"\(rollbacks 1\)",
                     top), top

    final = summary_of(run.out)
    assert final is not None and final["step"] == 60
    skipped = {**{k: v for k, v in cfg.items() if k != "debug"}, "health": {"skip": WINDOW}}
    assert final["checksum"] == reference_summary(tmp_path, skipped, 2)["checksum"]
    # the window mattered: the undisturbed run that trained on it ends elsewhere
    assert final["checksum"] != reference_summary(tmp_path / "plain", trainer_config(60), 2)["checksum"]


def test_a_job_that_diverges_every_time_fails_with_the_reason_after_its_budget(
        cluster, kube, namespace, recovery_pool, trainer_run, tmp_path):
    cfg = trainer_config(60, poison_samples=f"{(POISON_STEP - 1) * BATCH}:100000")

    def with_health(body: dict) -> None:
        body["spec"]["health"] = {"maxRollbacks": 2}

    run = trainer_run(name="diverge", cfg=cfg, node_selector=recovery_pool, edit=with_health)
    run.wait_phase("Failed", timeout=400)
    st = run.status()
    failed = [c for c in st["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "TrainingDiverged", failed
    assert "after 2 rollbacks (health.max_rollbacks=2)" in failed["message"], failed["message"]
    assert st["restarts"]["total"] == 0   # no restart: it would diverge again
    got = [(i["anomaly"]["action"], i["anomaly"]["rollbacks"], i["step"]) for i in anomalies(st)]
    assert got == [("rollback", 1, POISON_STEP), ("rollback", 2, POISON_STEP), ("fail", 2, POISON_STEP)], got


def test_a_paused_job_holds_without_pods_and_resumes_past_the_window_identical_to_a_run_that_skipped_it(
        cluster, kube, namespace, recovery_pool, trainer_run, tmp_path, capsys):
    """spec.health.onNonFinite: Pause. The job stops at the NaN, holds (Suspended, TrainingPaused, no running
    pod, nothing spent) and names the window; a person adds it to spec.health.skip and runs `stoker resume`;
    the job resumes from the checkpoint before the anomaly and ends as a run that skipped the window."""
    from stoker.cli.main import main

    cfg = trainer_config(60, poison_samples=WINDOW)

    def pause(body: dict) -> None:
        body["spec"]["health"] = {"onNonFinite": "Pause"}

    run = trainer_run(name="pause", cfg=cfg, node_selector=recovery_pool, edit=pause)
    run.wait_phase("Suspended", timeout=400)
    st = run.status()
    assert st["reason"] == "TrainingPaused" and "kubectl stoker resume pause" in st["message"], st["message"]
    [inc] = anomalies(st)
    assert inc["anomaly"] == {"kind": "NonFinite", "statistic": "loss=nan", "action": "pause", "rollbacks": 0,
                              "rolledBackTo": 20, "batchesSkipped": 0, "skipFrom": (POISON_STEP - 1) * BATCH,
                              "skipTo": POISON_STEP * BATCH}, inc
    assert f"add {WINDOW} to spec.health.skip" in inc["message"], inc["message"]
    assert [i["kind"] for i in st["incidents"]].count("Paused") == 1
    assert st["restarts"]["total"] == 0 and st["incarnation"] == 0
    wait_for("no running worker", lambda: not [p for p in worker_pods(kube, namespace, "pause")
                                               if p["status"].get("phase") in ("Pending", "Running")], timeout=120)

    patch_job(kube, namespace, "pause", {"spec": {"health": {"skip": WINDOW}}})
    capsys.readouterr()
    assert main(["resume", "pause", "--kubeconfig", str(cluster.kubeconfig), "-n", namespace]) == 0
    assert "paused by spec.health: resume requested" in capsys.readouterr().out
    run.wait_phase("Succeeded", timeout=400)
    st = run.status()
    assert st["incarnation"] == 1 and st["restarts"]["total"] == 0
    final = summary_of(run.out)
    assert final is not None and final["step"] == 60 and final["resumed_from"] == 20
    skipped = {**{k: v for k, v in cfg.items() if k != "debug"}, "health": {"skip": WINDOW}}
    assert final["checksum"] == reference_summary(tmp_path, skipped, 2)["checksum"]


def test_a_token_budget_ends_the_job_succeeded_with_the_reason(
        cluster, kube, namespace, recovery_pool, trainer_run, tmp_path):
    cfg = trainer_config(1000)
    cfg["train"]["max_tokens"] = 30 * BATCH * 16   # 30 steps of global batch 8 x seq_len 16
    run = trainer_run(name="budget", cfg=cfg, node_selector=recovery_pool)
    run.wait_phase("Succeeded", timeout=400)
    done = [c for c in run.status()["conditions"] if c["type"] == "Succeeded"][0]
    assert done["reason"] == "TokenBudgetReached", done
    assert done["message"] == "TokenBudgetReached: trained on 3840 tokens (train.max_tokens=3840)", done
    assert summary_of(run.out)["step"] == 30
