"""Bring your own image: the launcher copied into the pod by an init container
(``stoker.operator.launcher_bundle``) runs without the stoker package installed, and the
trainers it starts do not see the copy."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stoker.operator import launcher_bundle as B
from stoker.operator.jobspec import job_view
from stoker.operator.pods import RenderConfig, launcher_command, render_pod

from tests.recovery_tests.faults import alive

from .helpers import job_body

FLAGS = ["--nnodes=1:2"]
ENTRY = f"{B.MOUNT}/{B.ENTRY}"


@pytest.mark.parametrize("cmd, expected", [
    (["python", "train.py"], ["python", ENTRY, *FLAGS, "train.py"]),
    (["python3", "-m", "pkg.train"], ["python3", ENTRY, *FLAGS, "-m", "pkg.train"]),
    (["/usr/bin/train"], ["python3", ENTRY, *FLAGS, "--no-python", "/usr/bin/train"]),
])
def test_a_bundled_launcher_runs_from_the_pods_launcher_volume(cmd, expected):
    assert launcher_command(cmd, FLAGS, "stoker", bundled=True) == expected


def test_plain_torchrun_needs_no_bundle():
    assert launcher_command(["python", "t.py"], FLAGS, "torchrun", bundled=True)[:3] == \
        ["python", "-m", "torch.distributed.run"]


def test_with_a_launcher_image_the_pod_copies_the_launcher_in_before_the_trainer_starts():
    body = job_body()
    body["spec"]["template"]["spec"]["initContainers"] = [{"name": "user-init", "image": "busybox"}]
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    pod = render_pod(job_view(body), 0, 0, RenderConfig(launcher_image="stoker-operator:1"))
    spec = pod["spec"]
    init = spec["initContainers"]
    assert [c["name"] for c in init] == [B.CONTAINER, "user-init"]      # ours first: the user's may need it
    assert init[0]["image"] == "stoker-operator:1"
    assert init[0]["command"] == ["python", "-m", "stoker.operator.launcher_bundle", B.MOUNT]
    assert init[0]["securityContext"]["runAsNonRoot"] and init[0]["securityContext"]["readOnlyRootFilesystem"]
    assert [v["name"] for v in spec["volumes"]] == ["data", B.VOLUME]
    trainer = spec["containers"][0]
    assert {"name": B.VOLUME, "mountPath": B.MOUNT, "readOnly": True} in trainer["volumeMounts"]
    assert trainer["command"][1] == ENTRY
    assert not any(e["name"] == "PYTHONPATH" for e in trainer["env"])


def test_without_a_launcher_image_the_pod_is_unchanged():
    pod = render_pod(job_view(job_body()), 0, 0, RenderConfig())
    assert "initContainers" not in pod["spec"]
    assert pod["spec"]["containers"][0]["command"][1:3] == ["-m", "stoker.operator.launch"]


def _isolated_env() -> dict[str, str]:
    """An interpreter that sees torch's site-packages but not the stoker sources: with -S
    the editable install's .pth is never read, and PYTHONPATH adds no .pth files."""
    from stoker.devcluster.realnodes.pyimages import site_packages
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "PYTHON"))}
    return {**env, "PYTHONPATH": str(site_packages()), "OMP_NUM_THREADS": "1"}


TRAINER = """
import importlib.util, sys
import torch.distributed as dist
dist.init_process_group("gloo")
world = dist.get_world_size()
print("sees stoker:", importlib.util.find_spec("stoker") is not None, "world:", world, flush=True)
dist.destroy_process_group()
sys.exit(7 if world == 2 else 0)
"""


@pytest.mark.torch
def test_the_copied_launcher_runs_torchrun_without_stoker_installed_and_keeps_exit_codes(tmp_path):
    files = B.copy_to(tmp_path / "bundle")
    assert {p.name for p in files} >= {B.ENTRY, "launch.py", "rdzv_lock.py"}
    env = _isolated_env()
    probe = subprocess.run([sys.executable, "-S", "-c", "import stoker"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "the isolated interpreter must not find the stoker package"
    script = tmp_path / "train.py"
    script.write_text(TRAINER)
    r = subprocess.run([sys.executable, "-S", str(tmp_path / "bundle" / B.ENTRY), "--standalone",
                        "--nproc-per-node=2", "--no-python", sys.executable, "-S", str(script)],
                       env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.stdout.count("sees stoker: False world: 2") == 2, r.stdout + r.stderr[-3000:]
    assert r.returncode == 7, r.stderr[-3000:]       # the worker's own exit code, as with the installed launcher


def test_the_bundle_command_says_how_to_call_it():
    assert B.main([]) == 2


SLEEPER = """
import os, sys, time
open(sys.argv[1] + f".{os.environ['LOCAL_RANK']}", "w").write(str(os.getpid()))
time.sleep(120)
"""



@pytest.mark.torch
def test_a_sigkilled_launcher_takes_its_workers_with_it(tmp_path):
    """torchrun starts workers in sessions of their own: without the launcher's tie they
    trained on (and wrote checkpoints) after it was SIGKILLed, until something else killed them."""
    import signal
    import time
    B.copy_to(tmp_path / "bundle")
    (tmp_path / "sleep.py").write_text(SLEEPER)
    pids = tmp_path / "pid"
    launcher = subprocess.Popen([sys.executable, "-S", str(tmp_path / "bundle" / B.ENTRY), "--standalone",
                                 "--nproc-per-node=2", "--no-python", sys.executable, "-S",
                                 str(tmp_path / "sleep.py"), str(pids)], env=_isolated_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not all(pids.with_suffix(f".{r}").exists() for r in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(pids.with_suffix(f".{r}").read_text()) for r in (0, 1)]
        assert all(alive(p) for p in workers)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "a worker outlived its SIGKILLed launcher"
    finally:
        for r in (0, 1):
            if pids.with_suffix(f".{r}").exists():
                try:
                    os.kill(int(pids.with_suffix(f".{r}").read_text()), 9)
                except ProcessLookupError:
                    pass


REPORTER = """
import sys, types
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "old-grpc":        # an image whose grpcio is older than the generated code allows
    sys.modules["grpc"] = types.SimpleNamespace(__version__="1.0.0")
from stoker.operator.launch_inplace import Reporter
env = {"STOKER_OPERATOR_ADDR": "127.0.0.1:9", "STOKER_JOB_TOKEN": "t", "STOKER_JOB_NAMESPACE": "ns",
       "STOKER_JOB_NAME": "j"}
print("reporter:", Reporter.create(env) is not None, flush=True)
"""


@pytest.mark.parametrize("image, reports", [("grpc", True), ("old-grpc", False)])
def test_the_copied_launcher_reports_in_place_restarts_where_the_image_can(tmp_path, image, reports):
    """Found on real nodes: the bundle lacked the heartbeat contract (stoker.common.proto), so every
    launcher copied into a pod (every pod of a Helm install) turned in-place restarts off, even in the
    project's own worker image, and a killed trainer failed its pod. With grpcio and protobuf in the
    image the copy reports (and restarts in place); with a grpcio too old for the generated code it says
    why and turns them off, instead of failing the launcher."""
    B.copy_to(tmp_path / "bundle")
    (tmp_path / "probe.py").write_text(REPORTER)
    r = subprocess.run([sys.executable, "-S", str(tmp_path / "probe.py"), str(tmp_path / "bundle"), image],
                       env=_isolated_env(), capture_output=True, text=True, timeout=60)
    assert f"reporter: {reports}" in r.stdout, r.stdout + r.stderr[-3000:]
    assert ("in-place restarts off" in r.stderr) is not reports, r.stderr[-3000:]
