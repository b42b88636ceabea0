"""Fixtures for the recovery end-to-end tests: the operator fixtures of
tests/operator_tests (an operator process per test, the CRD), a pool of process
nodes of our own, S3 credentials in the test namespace, and the reference
(undisturbed) run of the built-in trainer."""
from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.nodepool import POOL_LABEL, NodePool, session_pool, unique  # noqa: F401  (POOL_LABEL re-exported)
from tests.operator_tests.conftest import crd, free_port, start_operator  # noqa: F401  (fixtures)
from tests.recovery_tests.e2e import start_trainer_job
from tests.recovery_tests.trainer_configs import trainer_config, write_config  # noqa: F401  (re-exported)

ROOT = pathlib.Path(__file__).resolve().parents[2]


recovery_pool = session_pool("recovery_pool", "rc-pnode", "recovery", 2,
                             "Two process nodes for the recovery tests (scenarios that lose a node bring their own).")


@pytest.fixture
def own_nodes(cluster):
    """Factory: n fresh process nodes with a label of their own; stopped afterwards."""
    pools: list[NodePool] = []

    def make(n: int) -> tuple[dict[str, str], list[str]]:
        pools.append(NodePool(cluster, unique("rc")))
        return pools[-1].selector, pools[-1].add(n)

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def gpu_nodes(cluster):
    """(selector, add): process nodes of a pool of this test's own, each with one GPU,
    so each takes exactly one worker; ``add(n)`` starts n more. Stopped and deleted afterwards."""
    pool = NodePool(cluster, unique("gpu"))
    yield pool.selector, lambda n: pool.add(n, gpus=1)
    pool.close()


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


@pytest.fixture
def trainer_run(cluster, kube, namespace, bucket, heartbeat_operator, tmp_path):
    """Factory: the e2e setup (operator with heartbeats, S3 Secret, trainer config, the
    TrainingJob); ``trainer_run(name=..., cfg=..., node_selector=...)`` -> e2e.Run."""
    return functools.partial(start_trainer_job, cluster=cluster, kube=kube, namespace=namespace, bucket=bucket,
                             operator=heartbeat_operator, tmp_path=tmp_path)


_REFERENCE: dict[tuple, dict] = {}


def reference_run(tmp: pathlib.Path, cfg: dict, nproc: int, prefix: tuple[str, ...] = ()) -> pathlib.Path:
    """The undisturbed run: torchrun --standalone with the same config (no debug hooks)
    and world size, no operator, local checkpoints. Returns its output folder
    (metrics.jsonl, summary.json). ``prefix``: a command it runs under (``nice -n 19``)."""
    ref = {k: v for k, v in cfg.items() if k != "debug"}
    ref["checkpoint"] = {**ref["checkpoint"], "uri": str(tmp / "ref-ckpt")}
    out = tmp / "ref"
    path = write_config(out / "config.json", ref, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "AWS_"))}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([*prefix, sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
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
