"""A node that stops heartbeating is marked not Ready quickly (test setting:
--node-monitor-grace-period=10s), for kwok nodes and for process nodes."""
import signal
import time
import uuid

import pytest

from stoker.devcluster.procs import processes_mentioning

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def ready_status(kube, name):
    conds = kube.core.read_node(name).status.conditions or []
    return next((c.status for c in conds if c.type == "Ready"), None)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def test_lost_kwok_node_goes_unknown_and_unreachable(cluster, kube):
    [name] = cluster.add_kwok_nodes(1, prefix=f"lost-{uuid.uuid4().hex[:8]}")
    try:
        wait_for(lambda: ready_status(kube, name) == "True", 60, "kwok to mark the node Ready")
        cluster.lose_kwok_node(name)  # kwok stops renewing its lease
        wait_for(lambda: ready_status(kube, name) == "Unknown", 60,
                 "the controller-manager to mark the node Unknown")
        taints = {t.key for t in kube.core.read_node(name).spec.taints or []}
        assert "node.kubernetes.io/unreachable" in taints
    finally:
        cluster.delete_nodes([name])


def test_killed_process_node_goes_not_ready_and_leaves_no_process(cluster, kube):
    name = f"pn-{uuid.uuid4().hex[:8]}"
    pid = cluster.start_process_node(name, gpus=2, labels={"stoker.dev/test": "lifecycle"})
    try:
        node = kube.core.read_node(name)
        assert node.status.allocatable["nvidia.com/gpu"] == "2"
        assert node.metadata.labels["stoker.dev/test"] == "lifecycle"
        assert name in cluster.process_nodes()

        assert cluster.stop_process_node(name, sig=signal.SIGKILL)
        assert name not in cluster.process_nodes()
        # The agent's own helpers (its pod-killing watchdog) wind down right after it.
        wait_for(lambda: not processes_mentioning(f"{cluster.state_dir}/nodes/{name}"), 30,
                 "every process of the node to be gone")
        wait_for(lambda: ready_status(kube, name) != "True", 60, "the node to stop being Ready")
    finally:
        cluster.stop_process_node(name, sig=signal.SIGKILL)
        cluster.delete_nodes([name])
    assert pid
