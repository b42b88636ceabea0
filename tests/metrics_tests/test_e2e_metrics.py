"""End to end: the operator's /metrics tells on-call what the job's status says.
A two-worker job loses a worker to SIGKILL at step 10, is restarted from that
checkpoint, and the scrape is read while it trains again and after it succeeded."""
from __future__ import annotations

import os
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operator_tests.conftest import wait_for
from tests.recovery_tests.conftest import trainer_config
from tests.recovery_tests.e2e import status, trainer_pid

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

STEPS = 400   # enough that the restarted job still trains for a while after it recovered


def scrape(op) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(op.metrics()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def values(scraped, name, **labels) -> list[float]:
    return [v for lab, v in scraped.get(name, []) if labels.items() <= lab.items()]


def one(scraped, name, **labels) -> float:
    found = values(scraped, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found} in {sorted(scraped)}"
    return found[0]


def test_metrics_of_a_job_that_recovered_from_a_killed_worker(
        cluster, kube, namespace, bucket, recovery_pool, trainer_run, tmp_path):
    cfg = trainer_config(STEPS, stall_after_step=10)  # every rank stops at step 10, after committing it
    run = trainer_run(name="mx", cfg=cfg, node_selector=recovery_pool)
    op, diag = run.op, run.diag
    job = {"namespace": namespace, "trainingjob": "mx"}
    wait_for("checkpoint 10 in status", lambda: (status(kube, namespace, "mx").get("lastCheckpoint") or {})
             .get("step") == 10, timeout=240, on_timeout=diag)
    pid = wait_for("trainer of worker 1", lambda: trainer_pid("mx-worker-1-0"), timeout=30, on_timeout=diag)
    os.kill(pid, signal.SIGKILL)
    wait_for("incident recovered", lambda: any("timeToRecoverSeconds" in i for i in
                                               status(kube, namespace, "mx").get("incidents") or []),
             timeout=240, interval=0.1, on_timeout=diag)

    # Training again after the restart: both ranks heartbeat, a new checkpoint committed.
    def running_view():
        s = scrape(op)
        live = (values(s, "stoker_job_workers", state="ready", **job) == [2.0]
                and len(values(s, "stoker_worker_last_heartbeat_timestamp_seconds", **job)) == 2
                and values(s, "stoker_checkpoint_bytes", **job) and values(s, "stoker_job_steps_per_second", **job))
        return s if live else None

    s = wait_for("metrics of the running job", running_view, timeout=120, interval=0.2, on_timeout=diag)
    st = status(kube, namespace, "mx")
    step = one(s, "stoker_job_step", **job)
    print(f"scraped while running at step {step:g} of {STEPS}; phase now {st.get('phase')}")
    assert 10 < step < STEPS
    assert one(s, "stoker_job_workers", state="desired", **job) == 2
    scraped_at = time.time()
    beats = values(s, "stoker_worker_last_heartbeat_timestamp_seconds", **job)
    assert sorted(lab["rank"] for lab, _ in s["stoker_worker_last_heartbeat_timestamp_seconds"]) == ["0", "1"]
    assert all(0 <= scraped_at - t < 30 for t in beats), beats  # 1 s heartbeats
    assert one(s, "stoker_job_phase", phase="Running", **job) == 1
    assert sum(values(s, "stoker_job_phase", **job)) == 1
    # Prometheus owns the `job` label (the scrape job): no series of ours may carry it.
    assert not [n for n, samples in s.items() for lab, _ in samples if "job" in lab]
    assert one(s, "stoker_job_steps_per_second", **job) >= 0
    assert one(s, "stoker_job_tokens_per_second", **job) > 0
    assert 10 <= one(s, "stoker_checkpoint_step", **job) <= step
    assert 0 <= scraped_at - one(s, "stoker_checkpoint_timestamp_seconds", **job) < 600
    assert one(s, "stoker_checkpoint_duration_seconds", **job) > 0
    assert one(s, "stoker_checkpoint_bytes", **job) > 0
    assert 0 < one(s, "stoker_job_goodput_ratio", **job) <= 1
    assert one(s, "stoker_job_restarts_total", cause="infrastructure") == 1
    assert one(s, "stoker_trainingjob_restarts_total", cause="infrastructure", **job) == 1
    assert sum(values(s, "stoker_failure_detection_seconds_count")) == 1
    assert one(s, "stoker_failure_detection_seconds_count", cause="WorkerKilled") == 1
    assert sum(values(s, "stoker_recovery_seconds_count")) == 1
    [inc] = st["incidents"]
    assert one(s, "stoker_recovery_seconds_sum", cause="WorkerKilled") == pytest.approx(inc["timeToRecoverSeconds"])

    wait_for("job Succeeded", lambda: status(kube, namespace, "mx").get("phase") == "Succeeded",
             timeout=300, on_timeout=diag)
    wait_for("phase Succeeded on /metrics", lambda: one(scrape(op), "stoker_trainingjobs", phase="Succeeded") == 1,
             timeout=30, on_timeout=diag)
    s = scrape(op)
    # Done: no pod is ready any more, the totals stay, heartbeats and rates are gone.
    assert one(s, "stoker_job_workers", state="ready", **job) == 0
    assert one(s, "stoker_job_workers", state="desired", **job) == 2
    assert one(s, "stoker_job_step", **job) == STEPS and one(s, "stoker_checkpoint_step", **job) == STEPS
    assert one(s, "stoker_job_phase", phase="Succeeded", **job) == 1
    for name in ("stoker_worker_last_heartbeat_timestamp_seconds",
                 "stoker_job_steps_per_second", "stoker_job_tokens_per_second"):
        assert not values(s, name, **job), name
    assert 0 < one(s, "stoker_job_goodput_ratio", **job) <= 1
    assert sum(values(s, "stoker_recovery_seconds_count")) == 1  # re-read on every pass, counted once
    assert one(s, "stoker_job_restarts_total", cause="infrastructure") == 1
