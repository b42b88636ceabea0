"""Helpers for the checkpoint tests: run real torchrun jobs on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def torchrun_argv(nproc: int, script: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            str(SCRIPTS / script), *map(str, args)]


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"})
    env.update(extra or {})
    return env


def run_torchrun(nproc: int, script: str, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun_argv(nproc, script, *args), env=job_env(env), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun {script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"job exited ({proc.returncode}) before {what}:\n{out[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
