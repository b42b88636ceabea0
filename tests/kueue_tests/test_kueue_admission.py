"""All-or-nothing admission through the real Kueue: a queued TrainingJob is one Kueue Workload
of all its workers. Two jobs that each need 60% of a ClusterQueue's GPU quota: one runs, the
other waits whole (not one of its pods exists) and says why, and starts whole once the first
ends; a job without a queue runs meanwhile, untouched by Kueue."""
from __future__ import annotations

import sys
import time

import pytest

from tests.operator_tests.conftest import create_job, diagnostics, get_job, job_manifest, wait_for, worker_pods

from .conftest import condition, workloads

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def gpu_job(name: str, selector: dict, *, seconds: float, gpus: int, queue: str | None) -> dict:
    body = job_manifest(name, [sys.executable, "-c", f"import time; time.sleep({seconds})"], replicas=2,
                        node_selector=selector)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}}
    if queue:
        body["spec"]["scheduling"] = {"queueName": queue}
    return body


def test_two_jobs_of_60_percent_of_the_quota_run_one_after_the_other_each_whole(
        cluster, kube, namespace, kueue, queue, kueue_operator, gpu_pool):
    selector, add = gpu_pool
    add(2, gpus=8)                        # 16 GPUs on the nodes: only Kueue's quota (10) keeps B out
    lq = queue(gpus=10)
    op = kueue_operator()
    create_job(kube, namespace, gpu_job("first", selector, seconds=20, gpus=3, queue=lq))  # 2 x 3 = 60%
    wait_for("first Running", lambda: get_job(kube, namespace, "first").get("status", {}).get("phase") == "Running",
             timeout=120, on_timeout=diagnostics(kube, namespace, "first", op))
    create_job(kube, namespace, gpu_job("second", selector, seconds=3, gpus=3, queue=lq))
    diag = diagnostics(kube, namespace, "second", op)

    def queued():
        st = get_job(kube, namespace, "second").get("status") or {}
        return st.get("phase") == "Queued" and "insufficient unused quota" in (st.get("message") or "") and st

    st = wait_for("second Queued, saying why", queued, timeout=60, on_timeout=diag)
    assert st["reason"] == "QueuedByKueue"
    assert condition(get_job(kube, namespace, "second"), "Queued")["status"] == "True"
    assert "nvidia.com/gpu" in st["message"], st["message"]

    # A job without a queue is not Kueue's business: it runs now, beside the full ClusterQueue.
    create_job(kube, namespace, gpu_job("free", selector, seconds=1, gpus=1, queue=None))
    # While the first runs, the second waits whole: not one of its pods exists.
    seen_second_alone = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        first = (get_job(kube, namespace, "first").get("status") or {}).get("phase")
        pods = worker_pods(kube, namespace, "second")
        if first != "Succeeded" and pods:
            seen_second_alone.append([p["metadata"]["name"] for p in pods])
        if first == "Succeeded":
            break
        time.sleep(0.2)
    assert not seen_second_alone, f"pods of the queued job existed while the first ran: {seen_second_alone}"
    wait_for("free Succeeded", lambda: (get_job(kube, namespace, "free").get("status") or {}).get("phase")
             == "Succeeded", timeout=120, on_timeout=diagnostics(kube, namespace, "free", op))
    wls = {w["metadata"]["labels"]["stoker.dev/job-name"]: w for w in workloads(cluster, namespace)}
    assert "free" not in wls and set(wls) == {"first", "second"}
    assert [ps["count"] for ps in wls["second"]["spec"]["podSets"]] == [2]   # one Workload of both workers
    wait_for("the first's Workload Finished (its quota free again)", lambda: condition(
        next(w for w in workloads(cluster, namespace) if w["metadata"]["labels"]["stoker.dev/job-name"] == "first"),
        "Finished").get("status") == "True", timeout=30, on_timeout=diag)

    wait_for("second Succeeded", lambda: (get_job(kube, namespace, "second").get("status") or {}).get("phase")
             == "Succeeded", timeout=180, on_timeout=diag)
    st = get_job(kube, namespace, "second")["status"]
    assert condition(get_job(kube, namespace, "second"), "Queued")["reason"] == "AdmittedByKueue"
    events = cluster.kubectl("describe", "tj", "second", "-n", namespace).stdout.split("Events:")[-1]
    assert "QueuedByKueue" in events and "Admitted" in events
    assert st["restarts"]["total"] == 0
