"""The README is what a new user and the on-call engineer read first: it opens with the
two commands that work, and its runbook names commands, columns and health states that
the CLI really has (and that mean what the runbook says)."""
from __future__ import annotations

import datetime as dt
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_opens_with_demo_and_test_commands():
    head = "\n".join(README.splitlines()[:15])
    assert re.search(r"^make demo\b", head, re.M) and re.search(r"^make test\b", head, re.M)
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def runbook_rows() -> list[list[str]]:
    section = README.split("## On-call", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if not set(r[0]) <= {"-", " "}]  # no header / separator


def runbook_commands() -> list[str]:
    cmds = []
    for row in runbook_rows():
        cmds += [c for c in re.findall(r"`(stoker [^`]+)`", row[1])]
    return cmds


def test_runbook_has_rows_and_commands():
    assert len(runbook_rows()) >= 5
    assert len(runbook_commands()) >= 6


@pytest.mark.parametrize("command", runbook_commands())
def test_runbook_command_parses_with_the_real_cli(command):
    from stoker.cli.main import build_parser

    words = shlex.split(re.sub(r"\[[^\]]*\]", "job", command))[1:]
    words = ["job" if w == "JOB" else "node-1" if w == "NODE" else "1" if w == "N" else w for w in words]
    args = build_parser().parse_args(words)  # SystemExit (usage error) fails the test
    assert callable(getattr(args, "func", None)), command


def test_runbook_columns_and_health_states_exist_and_mean_what_it_says():
    from stoker.cli import facts, jobs

    section = README.split("## On-call", 1)[1].split("\n## ", 1)[0]
    assert "LAST CKPT" in section and "LAST CKPT" in jobs.GET_HEADERS and "HEALTH" in jobs.GET_HEADERS
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    old = (now - dt.timedelta(seconds=600)).isoformat().replace("+00:00", "Z")
    running = {"spec": {"failurePolicy": {"progressTimeoutSeconds": 120}},
               "status": {"phase": "Running", "metrics": {"updateTime": old}}}
    # STALLED: no metrics update within the progress timeout
    assert facts.health(running, 2, 2, now)[0] == "STALLED"
    # DEGRADED: fewer ready workers than desired
    fresh = {"status": {"phase": "Running", "metrics": {"updateTime": now.isoformat()}}}
    assert facts.health(fresh, 1, 2, now)[0] == "DEGRADED"
    # RECOVERING: the job is restarting
    assert facts.health({"status": {"phase": "Restarting"}}, 0, 2, now)[0] == "RECOVERING"
    for state in ("STALLED", "DEGRADED", "RECOVERING"):
        assert f"`{state}`" in section


def what_is_here() -> list[str]:
    block = README.split("## What is here", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")]


def test_what_is_here_matches_the_tree():
    listed = what_is_here()
    for path in listed:
        assert (REPO / path).exists(), f"README 'What is here' lists {path}, which does not exist"
    tops = {p.name + ("/" if p.is_dir() else "") for p in REPO.iterdir()
            if not p.name.startswith(".") and p.name not in ("README.md",)}
    covered = {p.split("/")[0] + ("/" if "/" in p else "") for p in listed}
    ignored = {"build/", "dist/"}  # build outputs (git-ignored)
    assert tops - ignored <= covered, f"top-level entries missing from 'What is here': {sorted(tops - ignored - covered)}"


def test_runbook_waiting_rows_match_the_operator_and_the_cli():
    """The rows for jobs that cannot run name the health state `stoker get` shows for them
    and every reason the operator's Waiting condition uses."""
    from stoker.cli import facts
    from stoker.operator import preflight, refusals, waiting

    section = README.split("## On-call", 1)[1].split("\n## ", 1)[0]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    job = {"status": {"phase": "Created", "conditions": [
        {"type": "Waiting", "status": "True", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}}
    assert facts.health(job, 0, 2, now) == ("WAITING", "Unschedulable: 0/3 nodes are available")
    assert "`WAITING`" in section and "pendingTimeoutSeconds" in section
    reasons = {"Unschedulable", "InitContainerFailing", *waiting._CONFIG, "ImagePullBackOff", *waiting.REFUSALS,
               *preflight.REASONS, refusals.INVALID_POD_TEMPLATE}
    assert [r for r in sorted(reasons) if f"`{r}`" not in section] == []


def test_the_readme_chaos_table_is_the_one_bench_chaos_wrote():
    """README numbers come from bench/results: the chaos table is the default run's, cell
    for cell, with its seed and fault count (regenerate with bench.common.markdown_table)."""
    import json

    from bench.common import markdown_table

    data = json.loads((REPO / "bench" / "results" / "chaos.json").read_text())
    section = README.split("### Chaos", 1)[1].split("\n## ", 1)[0]
    for line in markdown_table(data["table"]).splitlines():
        assert line in section, f"README's chaos table lacks (or changed) {line!r}"
    assert f"seed {data['seed']}" in section and f"{data['faults_injected']} faults" in section



def test_the_readme_scale_table_is_the_one_bench_operator_scale_wrote():
    """The side-by-side scale table (Stoker, Kubeflow, bare pods) is the results file's, cell for
    cell, with its scale and goals as measured (regenerate with bench.common.markdown_table)."""
    import json

    from bench.common import markdown_table

    data = json.loads((REPO / "bench" / "results" / "bench_operator_scale.json").read_text())
    section = README.split("### Scale, side by side", 1)[1].split("\n## ", 1)[0]
    for line in markdown_table(data["table"]).splitlines():
        assert line in section, f"README's scale table lacks (or changed) {line!r}"
    assert f"{data['jobs']} jobs × {data['workers_per_job']} workers" in section
    for goal in data["goals"]:
        assert f"{goal['goal']}: {'met' if goal['met'] else 'missed'}" in section, goal
