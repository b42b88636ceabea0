"""Fixtures for the operator's cluster tests: the CRD, and an operator process
per test, scoped to the test's namespace (so tests never share an operator)."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from stoker.common import labels as L
from stoker.devcluster.procs import free_port
from tests.nodepool import POOL_LABEL, session_pool  # noqa: F401 (POOL_LABEL re-exported)

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"


@pytest.fixture(scope="session")
def crd(cluster):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_crd_established("trainingjobs.stoker.dev")
    # The API server's discovery of the new kind can lag the Established condition.
    deadline = time.monotonic() + 30
    while cluster.kubectl("get", "tj", "-A", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("trainingjobs never became servable")
        time.sleep(0.2)
    return CRD


class OperatorProcess:
    """`python -m stoker.operator.main` as a subprocess with short test timings."""

    def __init__(self, kubeconfig: pathlib.Path, namespace: str, log: pathlib.Path, *,
                 rendezvous: bool = False, resync: float = 1.0, extra_env: dict | None = None) -> None:
        self.namespace = namespace
        self.log_path = log
        self.metrics_port = free_port()
        self.rendezvous_port = free_port() if rendezvous else 0
        self.env = dict(os.environ)
        self.env.update({
            "STOKER_OPERATOR_KUBECONFIG": str(kubeconfig),
            "STOKER_OPERATOR_NAMESPACES": namespace,
            "STOKER_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "STOKER_OPERATOR_RENDEZVOUS_PORT": str(self.rendezvous_port),
            "STOKER_OPERATOR_RESYNC_SECONDS": str(resync),
            "STOKER_OPERATOR_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        })
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "OperatorProcess":
        self.starts += 1
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "stoker.operator.main"], env=self.env, cwd=ROOT,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the metrics endpoint answers (startup finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"operator not ready in {timeout}s:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the operator and its rendezvous child
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGKILL)  # the whole group; a graceful kopf exit takes seconds

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture
def start_operator(cluster, crd, namespace, tmp_path):
    """Factory: start an operator for the test's namespace; stopped at teardown."""
    procs: list[OperatorProcess] = []

    def start(**kw) -> OperatorProcess:
        op = OperatorProcess(cluster.kubeconfig, kw.pop("namespace", namespace),
                             tmp_path / f"operator-{len(procs)}.log", **kw)
        procs.append(op)
        op.start().wait_ready()
        return op

    yield start
    for op in procs:
        op.stop()


def get_job(kube, namespace: str, name: str) -> dict:
    return kube.custom.get_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", name)


def create_job(kube, namespace: str, body: dict) -> dict:
    return kube.custom.create_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", body)


def patch_job(kube, namespace: str, name: str, patch: dict) -> dict:
    return kube.custom.patch_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", name, patch)


def worker_pods(kube, namespace: str, job: str) -> list[dict]:
    resp = kube.core.list_namespaced_pod(namespace, label_selector=f"stoker.dev/job-name={job}",
                                         _preload_content=False)
    return json.loads(resp.data)["items"]


def diagnostics(kube, namespace, name, op):
    """on_timeout for wait_for: the job's status, its pods (node, phase) and the operator's log."""
    def f():
        try:
            st = get_job(kube, namespace, name).get("status") or {}
        except Exception as e:  # noqa: BLE001
            st = {"error": str(e)}
        pods = [(p["metadata"]["name"], p.get("spec", {}).get("nodeName"), p.get("status", {}).get("phase"))
                for p in worker_pods(kube, namespace, name)]
        return f"status={json.dumps(st, indent=1)}\npods={pods}\noperator log:\n{op.tail(40)}"
    return f


def wait_for(what: str, fn, timeout: float = 60, interval: float = 0.25, on_timeout=None):
    """Poll fn() until it returns a truthy value; fail with `what` (and diagnostics)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last={last!r}\n{extra}")


process_pool = session_pool("process_pool", "op-pnode", "operator", 3,
                            "Three process nodes (pods run as local processes) only the operator tests use.")


@pytest.fixture(scope="session")
def kwok_pool(cluster):
    """Simulated GPU nodes for cheap tests: pods on them turn Running and stay."""
    names = cluster.add_kwok_nodes(8, gpus=8, prefix="op-kwok", labels={POOL_LABEL: "operator-kwok"})
    yield {POOL_LABEL: "operator-kwok"}
    cluster.delete_nodes(names)


def job_manifest(name: str, command: list[str], *, replicas: int = 2, node_selector: dict | None = None,
                 env: dict | None = None, **spec) -> dict:
    container = {"name": "trainer", "image": "local/python", "command": command}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    body = {
        "apiVersion": "stoker.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [container], "terminationGracePeriodSeconds": 5}},
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 0},
            **spec,
        },
    }
    if node_selector:
        body["spec"]["template"]["spec"]["nodeSelector"] = node_selector
    return body


def stand_in_pod(kube, namespace: str, name: str) -> dict:
    """An operator's own pod as the API sees it (never scheduled: the operator is a local
    process here); the replica that acts labels it, as the chart's Service expects."""
    kube.core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": {"stoker.dev/test": "never"}, "containers": [{"name": "op", "image": "none"}]}})
    return {"STOKER_OPERATOR_POD_NAME": name, "STOKER_OPERATOR_POD_NAMESPACE": namespace}


def active_label(kube, namespace: str, name: str) -> str | None:
    return (kube.core.read_namespaced_pod(name, namespace).metadata.labels or {}).get(L.OPERATOR_ACTIVE)
