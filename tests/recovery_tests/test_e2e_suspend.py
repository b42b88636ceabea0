"""End to end: suspending a training job is a planned stop. The operator asks every
worker over the heartbeat stream to checkpoint and stop, the workers exit with that
checkpoint committed, the pods go, and the resumed job starts exactly at the step the
workers stopped at (no step computed twice) and ends identical to an undisturbed run."""
from __future__ import annotations

import pytest

from tests.operator_tests.conftest import patch_job, wait_for, worker_pods

from . import faults as F
from .conftest import reference_summary, trainer_config
from .e2e import metrics_rows, status, summary_of

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def test_suspend_drains_with_a_checkpoint_and_resume_continues_at_that_step_identical(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    # far more steps than pass between the suspend and the workers' stop (a few seconds)
    cfg = trainer_config(1000)
    jdir = tmp_path / "journal"
    run = trainer_run(name="sus", cfg=cfg, node_selector=recovery_pool, journal_dir=jdir)
    out, diag = run.out, run.diag
    wait_for("training", lambda: any(r["step"] >= 15 for r in metrics_rows(out)), timeout=300, interval=0.05,
             on_timeout=diag)

    patch_job(kube, namespace, "sus", {"spec": {"runPolicy": {"suspend": True}}})
    drained = wait_for("the drained incarnation's summary", lambda: (s := summary_of(out)) and
                       s.get("stopped_early") and s, timeout=240, on_timeout=diag)
    stop_step = drained["step"]
    assert 15 <= stop_step < 1000
    wait_for("Suspended, no pods", lambda: status(kube, namespace, "sus").get("phase") == "Suspended"
             and not worker_pods(kube, namespace, "sus"), timeout=120, on_timeout=diag)
    st = status(kube, namespace, "sus")
    # the checkpoint the workers wrote on the way out is the job's last one
    assert st["lastCheckpoint"]["step"] == stop_step
    events = cluster.kubectl("describe", "tj", "sus", "-n", namespace).stdout.split("Events:")[-1]
    assert "Draining" in events and "Drained" in events

    (out / "summary.json").unlink()
    patch_job(kube, namespace, "sus", {"spec": {"runPolicy": {"suspend": False}}})
    wait_for("job Succeeded", lambda: status(kube, namespace, "sus").get("phase") == "Succeeded", timeout=400,
             on_timeout=diag)
    final = summary_of(out)
    assert final is not None and final["step"] == 1000
    assert final["resumed_from"] == stop_step  # resumed exactly where the workers stopped
    # every step computed exactly once (rank 0's append-only journal over both incarnations)
    assert F.computed_steps(jdir) == list(range(1, 1001))
    assert F.resumed_steps(jdir) == [stop_step]
    assert final["checksum"] == reference_summary(tmp_path, cfg, 2)["checksum"]
    st = status(kube, namespace, "sus")
    assert st["restarts"]["userError"] == 0
    # a planned stop is not a failure: no incident
    assert not [i for i in st.get("incidents") or [] if i.get("kind") in ("Restart", "Replace", "JobFailed")]
