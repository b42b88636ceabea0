"""What a user gets from `pip install stoker`: the built wheel, installed into a clean
virtualenv outside the checkout, runs `stoker cluster up` (no flags), the operator, and
an example TrainingJob from examples/ to Succeeded, then `stoker cluster down`.

Only the dependencies (torch, kopf, ...) come from this test run's environment, through a
.pth line in the new venv (so no multi-GB download); stoker itself must come from the
wheel - the test checks every stoker module it uses resolves inside the new venv, and
that build-tools.sh runs from site-packages (the Go module pins are package data).
"""
from __future__ import annotations

import os
import re
import signal
import site
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from stoker.devcluster.procs import free_port

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "trainingjobs.stoker.dev.yaml"
EXAMPLE = REPO / "examples" / "minimal.yaml"   # runs on process nodes, needs no S3

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def _dependency_dirs() -> list[str]:
    """The site directories this test runs with (where torch, kopf, ... live), never a source
    folder of the checkout. A site-packages inside the checkout (`make test`'s .venv) counts:
    the editable stoker's .pth in it is not read when the folder comes in through a .pth line."""
    dirs = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    return dirs + [p for p in site.getsitepackages() if p not in dirs]


def _run(cmd: list[str], *, env: dict, cwd: Path, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.fixture
def installed(tmp_path):
    """(python, stoker console script, env, cwd) of a venv with the wheel installed."""
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
         env=dict(os.environ), cwd=tmp_path, timeout=600)
    (wheel,) = dist.glob("stoker-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   env=dict(os.environ), cwd=tmp_path, timeout=60).stdout.strip()
    # Dependencies only: a path listed in a .pth is added as is; the .pth files inside it (an
    # editable stoker's among them) are not read.
    Path(purelib, "zz_test_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
         env=dict(os.environ), cwd=tmp_path, timeout=600)
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KUBECONFIG", "STOKER_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{env_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               STOKER_HOME=str(tmp_path / "home"))       # the state dir; the Go tool cache stays shared
    if os.environ.get("STOKER_CACHE"):
        env["STOKER_CACHE"] = os.environ["STOKER_CACHE"]
    return py, env_dir / "bin" / "stoker", env, user, env_dir


def test_wheel_cluster_up_runs_an_example_job_to_success(installed, tmp_path):
    py, stoker, env, user, env_dir = installed
    where = _run([str(py), "-c", "import stoker.operator.main, stoker.worker.train, stoker.cli.main, "
                  "stoker.devcluster.nodeagent.agent as a, stoker.devcluster.local as l, "
                  "stoker.devcluster.clusterdefs as d;"
                  "print(stoker.operator.main.__file__, stoker.worker.train.__file__, stoker.cli.main.__file__, "
                  "a.__file__, l.__file__, d.BUILD_SCRIPT)"], env=env, cwd=user, timeout=120).stdout.split()
    assert len(where) == 6 and all(Path(w).resolve().is_relative_to(env_dir.resolve()) for w in where), where
    # build-tools.sh from site-packages: the Go module dirs are there (the cached binaries are found by
    # the same content key, so nothing is rebuilt when the checkout built them already).
    tools = _run([where[5], "kubectl"], env=env, cwd=user, timeout=3600).stdout
    assert re.search(r"^kubectl=/\S+/kubectl$", tools, re.M), tools

    up = _run([str(stoker), "cluster", "up"], env=env, cwd=user, timeout=3600, check=False)
    operator = None
    try:
        assert up.returncode == 0, f"stoker cluster up -> {up.returncode}\n{up.stdout}\n{up.stderr[-4000:]}"
        kubeconfig = re.search(r"^export KUBECONFIG=(\S+)$", up.stdout, re.M).group(1)  # type: ignore[union-attr]
        kubectl = re.search(r"^kubectl: (\S+)$", up.stdout, re.M).group(1)  # type: ignore[union-attr]
        kenv = {**env, "KUBECONFIG": kubeconfig}

        def k(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            return _run([kubectl, *args], env=kenv, cwd=user, timeout=120, check=check)

        nodes = k("get", "nodes", "-o", "name").stdout.split()
        assert len(nodes) >= 2, f"`stoker cluster up` with no flags started nodes {nodes}"
        k("apply", "--server-side", "-f", str(CRD))
        # polled: `kubectl wait --for condition=established` fails at once ("accessor error") when
        # it looks before the apiserver wrote any condition
        established = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + 60
        while k("get", "crd", "trainingjobs.stoker.dev", "-o", f"jsonpath={established}",
                check=False).stdout.strip() != "True":
            assert time.monotonic() < deadline, "the CRD never became Established"
            time.sleep(0.5)
        log = open(tmp_path / "operator.log", "wb")
        operator = subprocess.Popen(
            [str(stoker), "operator", "run", "--rendezvous-port", str(free_port()),
             "--metrics-port", str(free_port()), "--resync-seconds", "2"],
            env=kenv, cwd=user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while k("get", "serviceaccount", "default", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the default ServiceAccount never appeared"
            time.sleep(0.5)
        k("apply", "-f", str(EXAMPLE))
        phase, deadline = "", time.monotonic() + 900
        while phase != "Succeeded":
            assert operator.poll() is None, f"the operator exited:\n{_tail(tmp_path / 'operator.log')}"
            assert phase != "Failed", k("get", "tj", "minimal", "-o", "yaml").stdout
            assert time.monotonic() < deadline, (f"job phase {phase!r} after 900s\n"
                                                 f"{k('get', 'tj,pods', '-o', 'wide').stdout}\n"
                                                 f"{_tail(tmp_path / 'operator.log')}")
            time.sleep(1)
            phase = k("get", "tj", "minimal", "-o", "jsonpath={.status.phase}", check=False).stdout.strip()
    finally:
        if operator is not None:
            try:
                os.killpg(operator.pid, signal.SIGKILL)   # the operator and its rendezvous child
            except ProcessLookupError:
                pass
            operator.wait(30)
        down = _run([str(stoker), "cluster", "down"], env=env, cwd=user, timeout=300, check=False)
    assert down.returncode == 0, f"stoker cluster down -> {down.returncode}\n{down.stdout}\n{down.stderr}"


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
