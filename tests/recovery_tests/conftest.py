"""Fixtures for the recovery end-to-end tests: the operator fixtures of
tests/operator_tests (an operator process per test, the CRD), a pool of process
nodes of our own, S3 credentials in the test namespace, and the reference
(undisturbed) run of the built-in trainer."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from tests.operator_tests.conftest import crd, free_port, start_operator  # noqa: F401  (fixtures)
from tests.recovery_tests.trainer_configs import trainer_config, write_config  # noqa: F401  (re-exported)

POOL_LABEL = "stoker.dev/test-pool"
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def recovery_pool(cluster):
    """Two process nodes for the recovery tests (scenarios that lose a node bring their own)."""
    names = [f"rc-pnode-{i}" for i in range(2)]
    for n in names:
        if n not in cluster.process_nodes():
            cluster.start_process_node(n, gpus=0, labels={POOL_LABEL: "recovery"})
    yield {POOL_LABEL: "recovery"}
    for n in names:
        cluster.stop_process_node(n)


@pytest.fixture
def own_nodes(cluster):
    """Factory: n fresh process nodes with a label of their own; stopped afterwards."""
    started: list[str] = []

    def make(n: int) -> tuple[dict[str, str], list[str]]:
        tag = uuid.uuid4().hex[:6]
        names = [f"rc-{tag}-{i}" for i in range(n)]
        for name in names:
            cluster.start_process_node(name, gpus=0, labels={POOL_LABEL: f"rc-{tag}"})
            started.append(name)
        return {POOL_LABEL: f"rc-{tag}"}, names

    yield make
    for name in started:
        cluster.stop_process_node(name)
    if started:
        cluster.delete_nodes(started)


@pytest.fixture
def heartbeat_operator(start_operator, cluster):
    """Factory: an operator with the heartbeat service on a free port (1 s heartbeats)."""

    def start(**extra):
        port = free_port()
        env = {
            "STOKER_OPERATOR_HEARTBEAT_ADDRESS": f"127.0.0.1:{port}",
            "STOKER_OPERATOR_HEARTBEAT_INTERVAL_SECONDS": "1",
            "STOKER_OPERATOR_S3_ENDPOINT": cluster.s3_endpoint,
            **{k: str(v) for k, v in extra.items()},
        }
        return start_operator(rendezvous=True, extra_env=env)

    return start


_REFERENCE: dict[tuple, dict] = {}


def reference_run(tmp: pathlib.Path, cfg: dict, nproc: int) -> pathlib.Path:
    """The undisturbed run: torchrun --standalone with the same config (no debug hooks)
    and world size, no operator, local checkpoints. Returns its output folder
    (metrics.jsonl, summary.json)."""
    ref = {k: v for k, v in cfg.items() if k != "debug"}
    ref["checkpoint"] = {**ref["checkpoint"], "uri": str(tmp / "ref-ckpt")}
    out = tmp / "ref"
    path = write_config(out / "config.json", ref, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "AWS_"))}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "stoker.worker.train", str(path)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def reference_summary(tmp: pathlib.Path, cfg: dict, nproc: int) -> dict:
    """The undisturbed run's summary (reference_run), cached per (config, world) for the session."""
    key = (json.dumps({k: v for k, v in cfg.items() if k != "debug"}, sort_keys=True), nproc)
    if key not in _REFERENCE:
        _REFERENCE[key] = json.loads((reference_run(tmp, cfg, nproc) / "summary.json").read_text())
    return _REFERENCE[key]
