"""examples/sdk_script.py - AdamW, an LR scheduler, dropout and a seeded shuffling
DistributedSampler - killed with SIGKILL at a random step and started again with the same
command line, ends with exactly the weights of a run that was never interrupted."""
from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import _env, descendants

pytestmark = [pytest.mark.torch, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sdk_script.py"
STEPS, EVERY = 120, 20


def command() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(EXAMPLE), "--steps", str(STEPS), "--every", str(EVERY)]


def run(cwd: Path) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(command(), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]
    return (cwd / "final.sha256").read_text()


def progress(cwd: Path) -> int:
    try:
        return int((cwd / "progress").read_text() or 0)
    except (OSError, ValueError):
        return 0


def kill9_at(cwd: Path, step: int) -> int:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "killed.log", "w")
    proc = subprocess.Popen(command(), cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while progress(cwd) < step:
            assert proc.poll() is None, (cwd / "killed.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "never reached the kill step"
            time.sleep(0.02)
    finally:
        for pid in [proc.pid] + descendants(proc.pid):
            try:
                __import__("os").kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        log.close()
    return progress(cwd)


def test_the_sdk_example_resumes_bit_identically_after_kill_9(tmp_path):
    seed = random.randrange(2**32)
    kill_step = random.Random(seed).randrange(EVERY + 1, STEPS - 5)
    print(f"seed {seed}: SIGKILL once step {kill_step} is reached")
    reference = run(tmp_path / "reference")
    killed_at = kill9_at(tmp_path / "resumed", kill_step)
    assert killed_at < STEPS and not (tmp_path / "resumed" / "final.sha256").exists()
    assert list((tmp_path / "resumed" / "checkpoints").glob("step-*")), "no checkpoint before the kill"
    resumed = run(tmp_path / "resumed")  # the same command line: it resumes from the newest checkpoint
    print(f"killed at step {killed_at}; final checksum {resumed[:16]} (reference {reference[:16]})")
    assert resumed == reference
