"""`stoker cluster up` is idempotent; `down` leaves no process behind."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stoker.devcluster.procs import owned_alive, processes_mentioning, read_pid

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def stoker(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "stoker.cli.main", "cluster", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "STOKER_REPO": str(REPO)})


def pids(state: Path) -> dict[str, int]:
    return {p.stem: read_pid(p) for p in (state / "run").glob("*.pid")}


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path):
    state = tmp_path / "c"
    try:
        first = stoker("up", "--dir", str(state))
        assert first.returncode == 0, first.stderr
        assert f"export KUBECONFIG={state}/kubeconfig" in first.stdout
        started = pids(state)
        assert set(started) == {"etcd", "minio", "kube-apiserver", "kube-controller-manager",
                                "kube-scheduler", "kwok"}
        assert all(owned_alive(pid, f"{state}/") for pid in started.values())

        again = stoker("up", "--dir", str(state))
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        assert pids(state) == started, "a second `up` must not restart anything"

        assert stoker("status", "--dir", str(state)).returncode == 0

        down = stoker("down", "--dir", str(state))
        assert down.returncode == 0, down.stderr
        assert not any(owned_alive(pid, f"{state}/") for pid in started.values())
        assert all(not Path(f"/proc/{pid}").exists() or not owned_alive(pid, f"{state}/")
                   for pid in started.values())
        assert processes_mentioning(f"{state}/") == []
        assert stoker("status", "--dir", str(state)).returncode == 3
    finally:
        stoker("down", "--dir", str(state))
