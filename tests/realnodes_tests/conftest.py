"""Real-node tests (marker ``realnodes``): a cluster of their own with 2 real nodes
(kubelet + containerd + kube-proxy, each in a network namespace), started once per module.
Needs root, Linux and the packages of devcluster/stoker/devcluster/install-node-packages.sh.
They are left out of the default run: `make test-realnodes` runs them (STOKER_REALNODES=1)."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.realnodes_tests import hoststate

GPUS_PER_NODE = 2


def pytest_collection_modifyitems(config, items):
    if os.environ.get("STOKER_REALNODES") == "1":
        return
    skip = pytest.mark.skip(reason="real-node test: run with `make test-realnodes` (STOKER_REALNODES=1)")
    for item in items:
        if "realnodes" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def host_before():
    return hoststate.snapshot()


@pytest.fixture(scope="module")
def real_cluster(request, tmp_path_factory, host_before):
    """The module's cluster: ``REAL_NODES`` real nodes (a module-level constant; 2 if absent)."""
    from stoker.devcluster.local import LocalCluster

    c = LocalCluster(tmp_path_factory.mktemp("real"), die_with_parent=True)
    t0 = time.monotonic()
    try:
        c.up(real_nodes=getattr(request.module, "REAL_NODES", 2), gpus=GPUS_PER_NODE)
        print(f"real-node cluster up in {time.monotonic() - t0:.1f}s")
        yield c
    finally:
        c.down()


class Kube:
    """kubectl against a real-node cluster, in one namespace."""

    def __init__(self, cluster, ns: str) -> None:
        self.c, self.ns = cluster, ns

    def apply(self, *objs: dict) -> None:
        items = [dict(o, metadata=dict(o["metadata"], namespace=self.ns)) for o in objs]
        self.c.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.c.kubectl("get", kind, name, "-n", self.ns, "-o", "json").stdout)

    def wait(self, kind: str, name: str, predicate, what: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(kind, name)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} {self.ns}/{name} not {what} in {timeout}s: "
                                     f"{json.dumps(obj.get('status'), indent=1)}")
            time.sleep(0.5)

    def running(self, name: str, timeout: float = 120) -> dict:
        return self.wait("pod", name, lambda p: p["status"].get("phase") == "Running"
                         and all(s.get("ready") for s in p["status"].get("containerStatuses", [{}])),
                         "Running and ready", timeout)

    def exec(self, pod: str, *argv: str, check: bool = True):
        return self.c.kubectl("exec", "-n", self.ns, pod, "--", *argv, check=check)


@pytest.fixture
def kube_ns(real_cluster, request):
    import uuid
    ns = f"rn-{uuid.uuid4().hex[:8]}"
    real_cluster.kubectl("create", "namespace", ns)
    deadline = time.monotonic() + 30
    while real_cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode != 0:
        assert time.monotonic() < deadline, "no default ServiceAccount"
        time.sleep(0.2)
    yield Kube(real_cluster, ns)
    real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
