"""Job lifecycle on simulated (kwok) GPU nodes: running, printer columns, Events,
metrics, scale, a lost worker, suspend/resume, deadline, TTL and delete."""
from __future__ import annotations

import pytest

from .conftest import create_job, get_job, job_manifest, patch_job, wait_for, worker_pods

pytestmark = pytest.mark.cluster

CMD = ["python", "train.py"]


def gpu_job(name, node_selector, replicas=2, **spec):
    body = job_manifest(name, CMD, replicas=replicas, node_selector=node_selector, **spec)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    return body


def status(kube, ns, name):
    return get_job(kube, ns, name).get("status", {})


def pod_names(kube, ns, name, include_terminating=False):
    return sorted(p["metadata"]["name"] for p in worker_pods(kube, ns, name)
                  if include_terminating or not p["metadata"].get("deletionTimestamp"))


def running(kube, ns, name, n):
    st = status(kube, ns, name)
    return st.get("phase") == "Running" and st.get("readyReplicas") == n and st.get("workers") == f"{n}/{n}"


def test_job_runs_and_kubectl_shows_columns_events_and_metrics(cluster, kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("cols", kwok_pool))
    wait_for("Running 2/2", lambda: running(kube, namespace, "cols", 2), on_timeout=op.tail)
    assert pod_names(kube, namespace, "cols") == ["cols-worker-0-0", "cols-worker-1-0"]
    pod = worker_pods(kube, namespace, "cols")[0]
    assert pod["metadata"]["ownerReferences"][0]["name"] == "cols"
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "stoker-operator"
    job = get_job(kube, namespace, "cols")
    assert not job["metadata"].get("finalizers")  # deleting never waits for the operator
    assert job["status"]["observedGeneration"] == job["metadata"]["generation"]

    out = cluster.kubectl("get", "tj", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "WORKERS", "STEP", "RESTARTS", "CHECKPOINTED", "AGE"]
    assert out[1].split()[:3] == ["cols", "Running", "2/2"] and out[1].split()[3] == "0"  # restarts (no step yet)
    wide = cluster.kubectl("get", "tj", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert {"INCARNATION", "CHECKPOINT", "REASON"} <= set(wide)

    described = wait_for("Events in describe", lambda: (lambda d: d if "Running" in d.split("Events:")[-1] else None)(
        cluster.kubectl("describe", "tj", "cols", "-n", namespace).stdout))
    events = described.split("Events:")[-1]
    assert "JobCreated" in events and "2 of 2 workers ready" in events

    metrics = op.metrics()
    assert 'stoker_trainingjobs{phase="Running"} 1.0' in metrics
    assert "stoker_reconcile_duration_seconds_bucket" in metrics
    assert 'stoker_job_restarts_total{cause="userError"} 0.0' in metrics


def test_scale_up_and_down_adds_and_removes_the_highest_workers(cluster, kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("sc", kwok_pool, minReplicas=1, maxReplicas=4))
    wait_for("Running 2/2", lambda: running(kube, namespace, "sc", 2), on_timeout=op.tail)
    cluster.kubectl("scale", "-n", namespace, "tj/sc", "--replicas=4")
    wait_for("4 workers", lambda: running(kube, namespace, "sc", 4), on_timeout=op.tail)
    cluster.kubectl("scale", "-n", namespace, "tj/sc", "--replicas=1")
    wait_for("1 worker left", lambda: pod_names(kube, namespace, "sc", include_terminating=True) == ["sc-worker-0-0"],
             on_timeout=op.tail)
    st = status(kube, namespace, "sc")
    assert st["incarnation"] == 0 and st["restarts"]["total"] == 0 and st["replicas"] == 1


def test_a_deleted_worker_is_recreated_with_the_same_name(kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("lost", kwok_pool))
    wait_for("Running 2/2", lambda: running(kube, namespace, "lost", 2), on_timeout=op.tail)
    uid = {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(kube, namespace, "lost")}
    kube.core.delete_namespaced_pod("lost-worker-1-0", namespace, grace_period_seconds=0)
    wait_for("a new lost-worker-1-0", lambda: any(
        p["metadata"]["name"] == "lost-worker-1-0" and p["metadata"]["uid"] != uid["lost-worker-1-0"]
        and not p["metadata"].get("deletionTimestamp") for p in worker_pods(kube, namespace, "lost")),
        on_timeout=op.tail)
    assert pod_names(kube, namespace, "lost") == ["lost-worker-0-0", "lost-worker-1-0"]


def test_suspend_deletes_workers_keeps_the_job_and_resume_brings_them_back(cluster, kube, namespace, kwok_pool,
                                                                          start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("sus", kwok_pool))
    wait_for("Running 2/2", lambda: running(kube, namespace, "sus", 2), on_timeout=op.tail)
    patch_job(kube, namespace, "sus", {"spec": {"runPolicy": {"suspend": True}}})
    wait_for("Suspended with no pods", lambda: status(kube, namespace, "sus").get("phase") == "Suspended"
             and not pod_names(kube, namespace, "sus", include_terminating=True), on_timeout=op.tail)
    conds = {c["type"]: c for c in status(kube, namespace, "sus")["conditions"]}
    assert conds["Suspended"]["status"] == "True"
    patch_job(kube, namespace, "sus", {"spec": {"runPolicy": {"suspend": False}}})
    wait_for("Running again as incarnation 1", lambda: running(kube, namespace, "sus", 2)
             and pod_names(kube, namespace, "sus") == ["sus-worker-0-1", "sus-worker-1-1"], on_timeout=op.tail)
    st = status(kube, namespace, "sus")
    assert st["incarnation"] == 1 and st["restarts"]["total"] == 0
    assert {c["type"]: c["status"] for c in st["conditions"]}["Suspended"] == "False"
    events = cluster.kubectl("describe", "tj", "sus", "-n", namespace).stdout.split("Events:")[-1]
    assert "Suspended" in events and "Resumed" in events


def test_active_deadline_fails_the_job_and_deletes_running_workers(kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("dl", kwok_pool, runPolicy={"activeDeadlineSeconds": 3}))
    wait_for("Failed", lambda: status(kube, namespace, "dl").get("phase") == "Failed", on_timeout=op.tail)
    st = status(kube, namespace, "dl")
    assert st["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds=3" in st["message"]
    assert st["completionTime"]
    wait_for("running workers deleted", lambda: not pod_names(kube, namespace, "dl", include_terminating=True),
             on_timeout=op.tail)


def test_ttl_after_finished_deletes_the_job(kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("ttl", kwok_pool,
                                        runPolicy={"activeDeadlineSeconds": 2, "ttlSecondsAfterFinished": 2}))
    wait_for("Failed", lambda: status(kube, namespace, "ttl").get("phase") == "Failed", on_timeout=op.tail)
    jobs = lambda: kube.custom.list_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs")["items"]  # noqa: E731
    wait_for("job deleted by TTL", lambda: not jobs(), on_timeout=op.tail)
    wait_for("its pods garbage-collected", lambda: not pod_names(kube, namespace, "ttl", include_terminating=True),
             on_timeout=op.tail)


def test_deleting_the_job_removes_everything_it_owns(kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("del", kwok_pool, replicas=3, maxReplicas=3))
    wait_for("Running 3/3", lambda: running(kube, namespace, "del", 3), on_timeout=op.tail)
    kube.custom.delete_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", "del")
    wait_for("pods gone", lambda: not worker_pods(kube, namespace, "del"), on_timeout=op.tail)
