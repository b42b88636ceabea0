"""The three systems bench_operator_scale.py compares, each given the same jobs: Stoker
TrainingJobs, Kubeflow training-operator PyTorchJobs (1 master + N-1 workers) and bare pods
(no operator, the floor). All pods share one template: one container, one GPU, a node selector
for the benchmark's kwok pool, a label naming the job.

Each operator runs as a fresh process per measurement, watching only that measurement's
namespace, under its own client certificate (so the apiserver's audit log can tell its requests
apart): Stoker's as user ``stoker-operator``, Kubeflow's as ``kubeflow-training-operator``.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

from bench.common import free_port
from stoker.devcluster import pki
from stoker.devcluster.training_operator import USER as KUBEFLOW_USER
from stoker.devcluster.training_operator import TrainingOperator

ROOT = Path(__file__).resolve().parent.parent
POOL = {"stoker.dev/bench-pool": "operator-scale"}
JOB_LABEL = "bench.stoker.dev/job"
STOKER_USER = "stoker-operator"
SYSTEMS = ("bare", "stoker", "kubeflow")
USERS = {"stoker": STOKER_USER, "kubeflow": KUBEFLOW_USER}
PLURALS = {"stoker": "trainingjobs", "kubeflow": "pytorchjobs"}


def pod_template(job: str) -> dict[str, Any]:
    """The pod every system runs per worker (Kubeflow wants its container named ``pytorch``)."""
    return {"metadata": {"labels": {JOB_LABEL: job}},
            "spec": {"nodeSelector": dict(POOL), "containers": [{
                "name": "pytorch", "image": "local/python", "command": ["python", "train.py"],
                "resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "100m", "memory": "256Mi"}}}]}}


def trainingjob(name: str, workers: int) -> dict[str, Any]:
    return {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": workers, "template": pod_template(name)}}


def pytorchjob(name: str, workers: int) -> dict[str, Any]:
    def replicas(n: int) -> dict[str, Any]:
        return {"replicas": n, "restartPolicy": "OnFailure", "template": pod_template(name)}

    specs = {"Master": replicas(1)}
    if workers > 1:
        specs["Worker"] = replicas(workers - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"pytorchReplicaSpecs": specs}}


def bare_pod(job: str, index: int) -> dict[str, Any]:
    t = pod_template(job)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job}-{index}", **t["metadata"]},
            "spec": {**t["spec"], "restartPolicy": "Never"}}


def create_jobs(c: Any, system: str, ns: str, jobs: int, workers: int, threads: int = 8,
                first: int = 0) -> dict[str, float]:
    """Create jobs j<first>.. (or a job's bare pods); returns each job's create time (monotonic, just
    before its first request)."""
    def one(i: int) -> tuple[str, float]:
        name, t = f"j{i}", time.monotonic()
        if system == "bare":
            for k in range(workers):
                c.api("POST", f"/api/v1/namespaces/{ns}/pods", bare_pod(name, k), ok=(201,))
        elif system == "stoker":
            c.api("POST", f"/apis/stoker.dev/v1alpha1/namespaces/{ns}/trainingjobs", trainingjob(name, workers),
                  ok=(201,))
        else:
            c.api("POST", f"/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs", pytorchjob(name, workers), ok=(201,))
        return name, t

    with cf.ThreadPoolExecutor(threads) as ex:
        return dict(ex.map(one, range(first, first + jobs)))


def client_requests_per_job(system: str, workers: int) -> int:
    """The benchmark's own requests per job: one create per job, or one per bare pod."""
    return workers if system == "bare" else 1


# ---------------------------------------------------------------------------- process stats
def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------- operators
class StokerOperator:
    """``python -m stoker.operator.main`` (or ``argv``: a probe around it) for one namespace, as user
    stoker-operator."""

    def __init__(self, c: Any, workdir: Path, env: dict[str, str] | None = None,
                 argv: list[str] | None = None) -> None:
        self.c, self.workdir, self.extra_env = c, workdir, env or {}
        self.argv = argv or [sys.executable, "-m", "stoker.operator.main"]
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0
        self.kubeconfig = c.state_dir / "kubeconfigs" / "stoker-operator.kubeconfig"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def up(self, namespace: str, timeout: float = 60) -> "StokerOperator":
        pki.ensure_client_cert(self.c.pki_dir, "stoker-operator", STOKER_USER, "system:masters")
        self.kubeconfig.write_text(yaml.safe_dump(pki.kubeconfig(self.c.pki_dir, self.c.apiserver_url,
                                                                 "stoker-operator"), sort_keys=False))
        self.metrics_port = free_port()
        env = dict(os.environ, STOKER_OPERATOR_KUBECONFIG=str(self.kubeconfig), STOKER_OPERATOR_NAMESPACES=namespace,
                   STOKER_OPERATOR_METRICS_PORT=str(self.metrics_port), STOKER_OPERATOR_RENDEZVOUS_PORT="0",
                   STOKER_OPERATOR_LOG_LEVEL="WARNING", **self.extra_env)
        self.log = self.workdir / f"stoker-operator-{namespace}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=env, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.metrics()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Stoker operator did not start: " + self.log.read_text()[-2000:])
                time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line and not line.startswith("#") and len(line.split()) == 2}

    def down(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class KubeflowOperator:
    """Kubeflow's training-operator manager (stoker.devcluster.training_operator) for one namespace."""

    def __init__(self, c: Any) -> None:
        self.to = TrainingOperator(c)

    @property
    def pid(self) -> int:
        pid = self.to.pid
        assert pid is not None, "the training-operator is not running"
        return pid

    def up(self, namespace: str) -> "KubeflowOperator":
        self.to.up(namespace=namespace)
        return self

    def down(self) -> None:
        self.to.down()


def operator_for(system: str, c: Any, workdir: Path, stoker_env: dict[str, str] | None = None) -> Any:
    if system == "stoker":
        return StokerOperator(c, workdir, stoker_env)
    if system == "kubeflow":
        return KubeflowOperator(c)
    return None


def wait_until(what: str, cond: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
