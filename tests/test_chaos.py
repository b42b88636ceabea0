"""The short chaos profile (bench/chaos.py --profile short) inside `make test`: >= 10
faults of random kinds at random moments (seeded; the seed is in the output) on jobs of
the demo model, a pipeline and ZeRO-3. It fails on any job that did not end Succeeded,
with parameters identical to an undisturbed run, resumed from the newest commit, with
no duplicate or orphan pods and restarts on the right budget. `make chaos` runs the
default profile (>= 100 faults)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent


def test_short_chaos_profile_finds_no_mismatch(cluster, tmp_path):
    argv = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--profile", "short",
            "--cluster-dir", str(cluster.state_dir), "--out", str(tmp_path)]
    if os.environ.get("STOKER_CHAOS_SEED"):
        argv += ["--seed", os.environ["STOKER_CHAOS_SEED"]]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1400)
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    result = json.loads((tmp_path / "chaos-short.json").read_text())
    assert result["faults_injected"] >= 10 and len({r["kind"] for r in result["table"]}) >= 8
    assert result["failures"] == [], f"seed {result['seed']}: {result['failures']}"
    assert proc.returncode == 0
