"""The operator is SIGKILLed 10 times at random moments while jobs are created,
scaled and deleted. Afterwards every job has exactly the pods it should, none
was restarted, and no pod is orphaned."""
from __future__ import annotations

import random
import time

import pytest

from .conftest import get_job, job_manifest, wait_for, worker_pods

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KILLS = 10


def _pods(kube, namespace):
    import json

    resp = kube.core.list_namespaced_pod(namespace, _preload_content=False)
    return json.loads(resp.data)["items"]


def _jobs(kube, namespace):
    return {j["metadata"]["name"]: j for j in
            kube.custom.list_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs")["items"]}


def converged(kube, namespace):
    """None if converged, else a description of the first difference."""
    jobs = _jobs(kube, namespace)
    pods = _pods(kube, namespace)
    for name, job in jobs.items():
        st = job.get("status", {})
        inc = st.get("incarnation")
        want = {f"{name}-worker-{i}-{inc}" for i in range(job["spec"]["replicas"])}
        have = [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("stoker.dev/job-name") == name]
        if sorted(have) != sorted(want):
            return f"{name}: pods {sorted(have)} != {sorted(want)}"
        if st.get("phase") != "Running" or st.get("readyReplicas") != job["spec"]["replicas"]:
            return f"{name}: phase {st.get('phase')} ready {st.get('readyReplicas')}"
    uids = {j["metadata"]["uid"] for j in jobs.values()}
    for p in pods:
        owners = {r["uid"] for r in p["metadata"].get("ownerReferences", [])}
        if not owners & uids:
            return f"orphan pod {p['metadata']['name']}"
    return None


def test_operator_killed_ten_times_leaves_exactly_the_right_pods(kube, namespace, kwok_pool, start_operator):
    rng = random.Random(20261123)
    op = start_operator()
    live: set[str] = set()
    serial = 0

    def act():
        nonlocal serial
        choice = rng.random()
        if not live or (choice < 0.45 and len(live) < 6):
            serial += 1
            name = f"k{serial}"
            body = job_manifest(name, ["python", "train.py"], replicas=rng.randint(1, 3), minReplicas=1,
                                maxReplicas=4, node_selector=kwok_pool)
            body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
            kube.custom.create_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", body)
            live.add(name)
        elif choice < 0.8:
            name = rng.choice(sorted(live))
            kube.custom.patch_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", name,
                                                       {"spec": {"replicas": rng.randint(1, 4)}})
        else:
            name = rng.choice(sorted(live))
            kube.custom.delete_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", name)
            live.discard(name)

    for _ in range(KILLS):
        if rng.random() < 0.7:
            op.wait_ready()  # else: kill it somewhere in its startup
        for _ in range(rng.randint(1, 4)):
            act()
            time.sleep(rng.uniform(0, 0.3))
        time.sleep(rng.uniform(0.0, 1.0))  # the operator is in a pass, or idle
        op.kill()
        if rng.random() < 0.5:
            act()  # changes while no operator runs
        op.start()
    op.wait_ready()
    assert op.starts == KILLS + 1

    def diag():
        return f"{converged(kube, namespace)}\n{op.tail(20)}"

    wait_for("every job to have exactly its pods", lambda: converged(kube, namespace) is None, timeout=120,
             interval=0.5, on_timeout=diag)
    for name in live:
        st = get_job(kube, namespace, name)["status"]
        assert st["incarnation"] == 0 and st["restarts"]["total"] == 0, (name, st)  # kills cause no restarts
        indexes = [p["metadata"]["labels"]["stoker.dev/replica-index"] for p in worker_pods(kube, namespace, name)]
        assert len(indexes) == len(set(indexes))
    assert set(_jobs(kube, namespace)) == live
