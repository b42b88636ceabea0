"""`stoker checkpoint JOB --wait` against a real training job: the request reaches the
workers over the operator's gRPC stream, they commit a checkpoint at once, and the
command returns when status.lastCheckpoint has moved past the step the job was at."""
from __future__ import annotations

import json

import pytest

from tests.recovery_tests.conftest import (heartbeat_operator, recovery_pool,  # noqa: F401
                                           trainer_config, write_config)
from tests.recovery_tests.e2e import last_step, trainer_job

from .conftest import create_job, get_job, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]


def test_checkpoint_wait_returns_once_the_workers_committed_a_newer_checkpoint(
        stoker, cluster, kube, namespace, bucket, recovery_pool, heartbeat_operator, tmp_path):  # noqa: F811
    op = heartbeat_operator()
    cluster.create_s3_secret(namespace)
    out = tmp_path / "job"
    body = trainer_job("ask", write_config(out / "config.json", trainer_config(2000), out), bucket,
                       node_selector=recovery_pool)
    body["spec"]["checkpoint"]["intervalSteps"] = 100000  # only the on-call request checkpoints
    create_job(kube, namespace, body)
    wait_for("training past step 10", lambda: last_step(out / "metrics.jsonl") >= 10, timeout=240,
             on_timeout=op.tail)
    at_request = last_step(out / "metrics.jsonl")
    r = stoker("checkpoint", "ask", "--wait", "--timeout", "120", "-o", "json")
    assert r.rc == 0, r.err
    result = r.json()
    step = result["checkpoint"]["step"]
    assert result["requestedAtStep"] is None or step >= result["requestedAtStep"], result
    assert step >= at_request, result
    job = get_job(kube, namespace, "ask")
    assert job["status"]["lastCheckpoint"]["step"] == step
    assert job["status"]["lastCheckpoint"]["uri"].startswith(f"s3://{bucket}/ask/step-")
    # The table view reports the same checkpoint.
    got = json.loads(stoker("get", "ask", "-o", "json").out)
    rows = got if isinstance(got, list) else got.get("items", [got])
    assert any(str(step) in json.dumps(row) for row in rows), got
    kube.custom.delete_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", "ask")
