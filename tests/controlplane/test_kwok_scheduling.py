"""The scheduler packs GPU pods onto kwok nodes by nvidia.com/gpu, and kwok runs them."""
import collections
import time
import uuid

import pytest
from kubernetes import client

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODES, GPUS = 25, 8
POOL_KEY = "stoker.dev/test-pool"


def _pod(name, pool):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "gpu-fill"}),
        spec=client.V1PodSpec(
            # Only this test's nodes, and only this test's pods on them (parallel-safe).
            node_selector={POOL_KEY: pool},
            tolerations=[client.V1Toleration(key=POOL_KEY, operator="Equal", value=pool,
                                             effect="NoSchedule")],
            containers=[client.V1Container(
                name="train", image="stoker.invalid/none",
                resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}))],
        ),
    )


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def gpu_pool(cluster):
    pool = uuid.uuid4().hex[:8]
    names = cluster.add_kwok_nodes(
        NODES, gpus=GPUS, prefix=f"gpu-{pool}", labels={POOL_KEY: pool},
        taints=[{"key": POOL_KEY, "value": pool, "effect": "NoSchedule"}])
    yield pool, names
    cluster.delete_nodes(names)


def test_200_gpu_pods_fill_25_nodes_and_the_201st_is_unschedulable(kube, namespace, gpu_pool):
    pool, nodes = gpu_pool
    _wait(lambda: all(
        any(c.type == "Ready" and c.status == "True" for c in (kube.core.read_node(n).status.conditions or []))
        for n in nodes), 60, "kwok to mark the nodes Ready")

    for i in range(NODES * GPUS):
        kube.core.create_namespaced_pod(namespace, _pod(f"fill-{i:03d}", pool))

    def all_running():
        pods = kube.core.list_namespaced_pod(namespace, field_selector="status.phase=Running").items
        return pods if len(pods) == NODES * GPUS else None

    running = _wait(all_running, 180, f"{NODES * GPUS} pods Running")
    per_node = collections.Counter(p.spec.node_name for p in running)
    assert set(per_node) == set(nodes)
    assert set(per_node.values()) == {GPUS}
    assert all(p.status.pod_ip for p in running), "kwok gives running pods an IP"

    kube.core.create_namespaced_pod(namespace, _pod("one-too-many", pool))

    def unschedulable():
        pod = kube.core.read_namespaced_pod("one-too-many", namespace)
        conds = {c.type: c for c in (pod.status.conditions or [])}
        c = conds.get("PodScheduled")
        return pod if c and c.status == "False" and c.reason == "Unschedulable" else None

    pod = _wait(unschedulable, 60, "the 201st pod to be reported Unschedulable")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    assert "nvidia.com/gpu" in pod.status.conditions[0].message or any(
        "nvidia.com/gpu" in (c.message or "") for c in pod.status.conditions)
