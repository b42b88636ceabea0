"""Preemption through the real Kueue: a higher-priority TrainingJob makes Kueue evict a running
one; the evicted job's workers checkpoint and stop first (the drain), its Workload is released
and re-queued, the preemptor runs, and once it ends the evicted job is admitted again and
resumes exactly where its workers stopped, ending bit-identical to an undisturbed run."""
from __future__ import annotations

import pytest

from tests.operator_tests.conftest import create_job, wait_for, worker_pods
from tests.recovery_tests import faults as F
from tests.recovery_tests.conftest import reference_summary, trainer_config, write_config
from tests.recovery_tests.e2e import diagnostics, metrics_rows, status, summary_of, trainer_job

from .conftest import condition, workloads

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def queued_trainer(name, cfg, out, bucket, selector, queue, priority_class, journal=None) -> dict:
    body = trainer_job(name, write_config(out / "config.json", cfg, out), bucket, node_selector=selector,
                       journal_dir=journal)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}
    body["spec"]["scheduling"] = {"queueName": queue, "priorityClassName": priority_class}
    return body


def test_a_higher_priority_job_preempts_through_kueue_and_the_preempted_one_resumes_identical(
        cluster, kube, namespace, bucket, kueue, queue, kueue_operator, gpu_pool, tmp_path):
    selector, add = gpu_pool
    add(2, gpus=2)
    lq = queue(gpus=3)                      # each job: 2 workers x 1 GPU = 67% of the quota
    for name, value in (("kq-low", 100), ("kq-high", 1000)):
        cluster.api("POST", "/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
            "value": value}, ok=(201, 409))
    op = kueue_operator()
    cluster.create_s3_secret(namespace)
    cfg, jdir, low_out = trainer_config(1000), tmp_path / "journal", tmp_path / "low"
    create_job(kube, namespace, queued_trainer("low", cfg, low_out, bucket, selector, lq, "kq-low", jdir))
    diag = diagnostics(kube, namespace, "low", op)
    wait_for("low training", lambda: any(r["step"] >= 15 for r in metrics_rows(low_out)), timeout=300,
             interval=0.05, on_timeout=diag)

    high_out = tmp_path / "high"
    create_job(kube, namespace, queued_trainer("high", trainer_config(20), high_out, bucket, selector, lq,
                                               "kq-high"))
    drained = wait_for("low drained (checkpoint first)", lambda: (s := summary_of(low_out)) and
                       s.get("stopped_early") and s, timeout=240, on_timeout=diag)
    stop_step = drained["step"]
    assert 15 <= stop_step < 1000
    st = wait_for("low Queued again", lambda: (s := status(kube, namespace, "low")).get("phase") == "Queued"
                  and not worker_pods(kube, namespace, "low") and s, timeout=120, on_timeout=diag)
    assert st["lastCheckpoint"]["step"] == stop_step      # the drain's checkpoint is the job's last one
    assert st["restarts"]["preemption"] == 1 and st["restarts"]["userError"] == 0
    evicted = [i for i in st["incidents"] if i["kind"] == "Evicted"]
    assert evicted and "Preempted" in evicted[0]["message"], st["incidents"]
    events = cluster.kubectl("describe", "tj", "low", "-n", namespace).stdout.split("Events:")[-1]
    assert "Draining" in events and "Drained" in events and "EvictedByKueue" in events

    (low_out / "summary.json").unlink()
    wait_for("high Succeeded", lambda: status(kube, namespace, "high").get("phase") == "Succeeded", timeout=300,
             on_timeout=diagnostics(kube, namespace, "high", op))
    wait_for("low Succeeded", lambda: status(kube, namespace, "low").get("phase") == "Succeeded", timeout=400,
             on_timeout=diag)
    final = summary_of(low_out)
    assert final is not None and final["step"] == 1000
    assert final["resumed_from"] == stop_step             # resumed exactly where the workers stopped
    assert F.computed_steps(jdir) == list(range(1, 1001))  # every step computed exactly once
    assert final["checksum"] == reference_summary(tmp_path, cfg, 2)["checksum"]
    wls = {w["metadata"]["labels"]["stoker.dev/job-name"]: w for w in workloads(cluster, namespace)}
    assert wls["low"]["spec"]["priority"] == 100 and wls["high"]["spec"]["priority"] == 1000
    assert condition(wls["low"], "Finished")["status"] == "True"
