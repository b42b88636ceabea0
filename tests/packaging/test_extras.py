"""What each install of the distribution brings, checked with real installs of the
wheel into clean venvs outside the checkout (pip resolves the dependencies from the
package index, constrained to the versions this test environment runs):

- `stoker` (base): the on-call CLI and the kubectl plugin; no torch, under 50 MB, and
  `kubectl stoker get` works against the local cluster through kubectl's plugin lookup;
- `stoker[operator]`: the operator reconciles a TrainingJob with torch not installed
  (so nothing on its path imports torch), and the c10d rendezvous store it hosts serves
  that job's torch TCPStore clients through the locked gateway.
"""
from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from stoker.common import rdzv_lock
from tests.operator_tests.conftest import (crd, free_port, job_manifest, kwok_pool,  # noqa: F401
                                           wait_for)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
BASE_LIMIT_MB = 50


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (whl,) = dist.glob("stoker-*.whl")
    return whl


@pytest.fixture(scope="module")
def constraints(tmp_path_factory) -> Path:
    """The versions this environment runs, so the clean installs resolve quickly and alike."""
    pins = sorted({f"{_canonical(d.metadata['Name'])}=={d.version}" for d in md.distributions()
                   if d.metadata["Name"] and _canonical(d.metadata["Name"]) not in ("stoker", "pip")})
    path = tmp_path_factory.mktemp("pins") / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


class CleanVenv:
    def __init__(self, root: Path) -> None:
        self.root = root
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        self.bin = root / "bin"
        self.python = self.bin / "python"
        self.site = Path(self.run_py("import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *argv: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(argv), cwd=self.root, env=self.env(), capture_output=True, text=True,
                             timeout=timeout)
        if check:
            assert out.returncode == 0, f"{argv} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    def run_py(self, code: str) -> str:
        return self.run(str(self.python), "-c", code).stdout

    def install(self, requirement: str, constraints: Path) -> None:
        self.run(str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "-c", str(constraints), requirement)

    def distributions(self) -> set[str]:
        names = self.run_py("import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] "
                            "for d in m.distributions()))")
        return {_canonical(n) for n in names.split()}

    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.site.rglob("*") if f.is_file()) / 2**20


@pytest.fixture(scope="module")
def oldest(tmp_path_factory) -> Path:
    """The base dependencies at the floors pyproject.toml allows (name==floor)."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [re.sub(r">=([^,]+).*", r"==\1", d) for d in deps]
    assert all("==" in p for p in pins), pins
    path = tmp_path_factory.mktemp("oldest") / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


@pytest.mark.parametrize("versions", ["current", "oldest"])
def test_base_install_is_small_torch_free_and_runs_the_kubectl_plugin(
        tmp_path, wheel, constraints, oldest, versions, cluster, crd, namespace):  # noqa: F811
    env = CleanVenv(tmp_path / "base")
    before = env.size_mb()  # pip itself
    env.install(str(wheel), constraints if versions == "current" else oldest)
    print(f"{versions}: {env.run_py('import yaml, urllib3; print(yaml.__version__, urllib3.__version__)')}")
    added = env.size_mb() - before
    dists = env.distributions()
    print(f"base install: {added:.1f} MB added, distributions: {sorted(dists)}")
    heavy = dists & {"torch", "numpy", "s3torchconnector", "kubernetes", "kopf", "grpcio", "cryptography", "boto3"}
    assert not heavy, f"the base install pulled {sorted(heavy)}"
    assert added < BASE_LIMIT_MB, f"the base install adds {added:.1f} MB (limit {BASE_LIMIT_MB} MB)"

    job = job_manifest("plugin-sees-me", ["python", "train.py"], replicas=1)
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job))
    # kubectl finds kubectl-stoker on PATH (the venv's bin) and runs it: the plugin, end to end.
    kubectl = cluster.tool("kubectl")
    got = env.run(kubectl, "stoker", "get", "-n", namespace, "-o", "json", "--kubeconfig", str(cluster.kubeconfig))
    names = [j["name"] for j in json.loads(got.stdout)["items"]]
    assert names == ["plugin-sees-me"], got.stdout

    # The dev cluster and the operator are extras: their commands say which one.
    out = env.run(str(env.bin / "stoker"), "cluster", "status", check=False)
    assert out.returncode != 0
    assert "stoker[cluster]" in out.stderr + out.stdout, out.stderr
    out = env.run(str(env.bin / "stoker"), "operator", "run", "--kubeconfig", str(cluster.kubeconfig), check=False)
    assert out.returncode == 1 and "stoker[operator]" in out.stderr, out.stderr


@pytest.mark.torch      # the test's own TCPStore client
def test_operator_extra_runs_the_operator_and_its_rendezvous_without_torch(
        tmp_path, wheel, constraints, cluster, crd, namespace, kwok_pool):  # noqa: F811
    env = CleanVenv(tmp_path / "operator")
    env.install(f"{wheel}[operator]", constraints)
    dists = env.distributions()
    assert "kopf" in dists and "torch" not in dists, sorted(dists)

    rdzv = free_port()
    log = open(tmp_path / "operator.log", "wb")
    proc = subprocess.Popen([str(env.bin / "stoker"), "operator", "run", "--kubeconfig", str(cluster.kubeconfig),
                             "-n", namespace, "--health-port", "0", "--metrics-port", str(free_port()),
                             "--rendezvous-port", str(rdzv), "--heartbeat-address", f"127.0.0.1:{free_port()}"],
                            cwd=env.root, env=env.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        job = job_manifest("no-torch-op", ["python", "train.py"], replicas=2, node_selector=kwok_pool)
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job))

        def phase():
            out = cluster.kubectl("get", "tj", "no-torch-op", "-n", namespace, "-o",
                                  "jsonpath={.status.phase}/{.status.readyReplicas}", check=False)
            return out.stdout == "Running/2"

        wait_for("the torch-free operator to run the job", phase, timeout=120,
                 on_timeout=lambda: (tmp_path / "operator.log").read_text(errors="replace")[-3000:])
        assert proc.poll() is None
        # The job's own store, through the gateway with the job's token, as its launcher reaches it.
        token = cluster.kubectl("get", "secret", "stoker-no-torch-op-token", "-n", namespace,
                                "-o", "jsonpath={.data}").stdout
        token = base64.b64decode(next(iter(json.loads(token).values()))).decode()
        fwd = rdzv_lock.Forwarder(("127.0.0.1", rdzv), namespace, "no-torch-op", token)
        from torch.distributed import TCPStore
        store = TCPStore("127.0.0.1", fwd.port, is_master=False, timeout=dt.timedelta(seconds=20))
        store.set("torch.rendezvous.probe", "served without torch")
        assert store.get("torch.rendezvous.probe") == b"served without torch"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        log.close()
