"""Fixtures for the on-call CLI's cluster tests: the CRD, an operator process
per test (scoped to the test's namespace; from tests/operator_tests), simulated
GPU nodes of our own, and ``stoker(...)``: the CLI run in-process against the
test cluster and namespace."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest

from tests.operator_tests.conftest import (OperatorProcess, crd, create_job, get_job,  # noqa: F401
                                           job_manifest, start_operator, wait_for, worker_pods)

POOL_LABEL = "stoker.dev/test-pool"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def stoker(cluster, namespace, capsys):
    """stoker(*argv, ns=namespace) -> Result: `stoker ARGV --kubeconfig K -n NS` in-process."""
    from stoker.cli.main import main

    def run(*argv: str, ns: str | None = namespace) -> Result:
        capsys.readouterr()
        extra = ["--kubeconfig", str(cluster.kubeconfig)] + (["-n", ns] if ns else [])
        rc = main([*argv, *extra])
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return run


@pytest.fixture(scope="session")
def cli_kwok_pool(cluster):
    """Four simulated GPU nodes only the CLI tests use (drain needs somewhere to go)."""
    value = f"cli-{uuid.uuid4().hex[:6]}"
    names = cluster.add_kwok_nodes(4, gpus=8, prefix=value, labels={POOL_LABEL: value})
    yield {POOL_LABEL: value}
    cluster.delete_nodes(names)


@pytest.fixture(scope="session")
def cli_process_pool(cluster):
    """Two process nodes (pods run as local processes) for `stoker logs`."""
    value = f"cli-{uuid.uuid4().hex[:6]}"
    names = [f"{value}-p{i}" for i in range(2)]
    for n in names:
        cluster.start_process_node(n, gpus=0, labels={POOL_LABEL: value})
    yield {POOL_LABEL: value}
    for n in names:
        cluster.stop_process_node(n)
    cluster.delete_nodes(names)


def gpu_job(name: str, pool: dict, replicas: int = 2, **spec) -> dict:
    body = job_manifest(name, ["python", "train.py"], replicas=replicas, node_selector=pool, **spec)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    return body


def running(kube, ns: str, name: str, n: int) -> bool:
    st = get_job(kube, ns, name).get("status", {})
    return st.get("phase") == "Running" and st.get("readyReplicas") == n
