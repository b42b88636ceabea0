"""`make demo` works: it brings up its own control plane, runs a pod on a process node,
runs a TrainingJob through the operator, survives an injected worker failure and
prints a summary whose facts match what really happened."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def test_make_demo_end_to_end(tmp_path):
    summary_file = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.demo", "--dir", str(tmp_path / "demo"),
         "--summary-json", str(summary_file)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(summary_file.read_text())
    pod = summary["pod"]
    assert pod["phase"] == "Succeeded"
    # The pod printed the name and IP it read from the downward API; they are the API's.
    assert f"hello from pod hello at {pod['podIP']} on node {pod['node']}" == pod["output"]
    training = summary["training"]
    assert training["phase"] == "Succeeded" and training["ok"]
    assert training["failure_injected_at_step"] < training["final_step"] == 60
    assert len(training["final_checksum"]) == 64
    # Nothing of the demo is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
