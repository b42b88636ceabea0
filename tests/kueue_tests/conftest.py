"""Fixtures for the Kueue tests: the real Kueue (built from its Go module, its webhooks
registered: devcluster/stoker/devcluster/kueue.py) next to the session's cluster, started only
when a test asks for it; per test a ResourceFlavor, a ClusterQueue with a GPU quota for the
test's namespace, a LocalQueue in it, and an operator that watches Workloads."""
from __future__ import annotations

import uuid

import pytest

from tests.nodepool import NodePool, unique
from tests.operator_tests.conftest import crd, free_port, start_operator, wait_for  # noqa: F401  (fixtures)
from tests.recovery_tests.conftest import heartbeat_operator  # noqa: F401  (fixture)

KUEUE = "/apis/kueue.x-k8s.io/v1beta2"


@pytest.fixture(scope="session")
def kueue(cluster):
    """Kueue's controller-manager and webhooks (first use: a ~4 min build, then ~7 s)."""
    return cluster.kueue().up()


@pytest.fixture
def queue(cluster, kueue, namespace):
    """Factory: ``queue(gpus=10, cpu=...)`` -> the LocalQueue's name, admitting into a ClusterQueue of
    this test (preemption of lower priorities within it) with an nvidia.com/gpu quota."""
    made: list[str] = []

    def make(gpus: int) -> str:
        name = f"cq-{uuid.uuid4().hex[:8]}"
        cluster.api("POST", f"{KUEUE}/resourceflavors", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": name}})
        cluster.api("POST", f"{KUEUE}/clusterqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": name},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                     "preemption": {"withinClusterQueue": "LowerPriority"},
                     "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"], "flavors": [
                         {"name": name, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": str(gpus)}]}]}]}})
        made.append(name)
        cluster.api("POST", f"{KUEUE}/namespaces/{namespace}/localqueues", {
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team"},
            "spec": {"clusterQueue": name}})
        # Jobs queue only once Kueue has taken both in (Active), so admission starts from a settled ClusterQueue.
        for path in (f"{KUEUE}/clusterqueues/{name}", f"{KUEUE}/namespaces/{namespace}/localqueues/team"):
            wait_for(f"{path} Active", lambda: condition(cluster.api("GET", path)[1], "Active").get("status")
                     == "True", timeout=30)
        return "team"

    yield make
    for name in made:
        cluster.api("DELETE", f"{KUEUE}/clusterqueues/{name}", ok=None)
        cluster.api("DELETE", f"{KUEUE}/resourceflavors/{name}", ok=None)


@pytest.fixture
def kueue_operator(heartbeat_operator):
    """Factory: an operator for the test's namespace (rendezvous, heartbeats: drains work) that watches
    Kueue Workloads (STOKER_OPERATOR_KUEUE=on)."""
    return lambda **extra: heartbeat_operator(STOKER_OPERATOR_KUEUE="on", **extra)


@pytest.fixture
def gpu_pool(cluster):
    """(selector, add): process nodes of this test's own; ``add(n, gpus)``. Stopped afterwards."""
    pool = NodePool(cluster, unique("kq"))
    yield pool.selector, pool.add
    pool.close()


def workloads(cluster, namespace: str) -> list[dict]:
    return cluster.api("GET", f"{KUEUE}/namespaces/{namespace}/workloads")[1].get("items") or []


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})
