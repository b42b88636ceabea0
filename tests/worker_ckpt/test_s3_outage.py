"""S3 going away during a save: the save retries, or fails cleanly, and training goes on."""
import threading
import time

import pytest
import torch

from stoker.common import layout
from stoker.worker.checkpoint import CheckpointManager, open_store

pytestmark = [pytest.mark.torch, pytest.mark.cluster, pytest.mark.parametrize("transport", ["s3torchconnector", "crt", "boto3"])]


def manager(uri: str, transport: str, retry_timeout_s: float) -> CheckpointManager:
    store = open_store(uri, backend=transport, retry_timeout_s=retry_timeout_s)
    return CheckpointManager(uri, keep=3, async_mode="async", store=store)


def train_until(done, model, at_least: int = 5) -> int:
    """Keep stepping (like a training loop) until ``done()``; return the step count."""
    steps = 0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    while steps < at_least or not done():
        model(torch.randn(2, 64)).sum().backward()
        opt.step()
        opt.zero_grad()
        steps += 1
    return steps


def test_save_during_outage_fails_cleanly_then_next_save_commits(s3_env, s3_uri, transport):
    model = torch.nn.Linear(64, 64)
    with manager(s3_uri, transport, retry_timeout_s=2.0) as ckpt:
        ckpt.save(1, {"model": model})
        assert ckpt.wait().ok
        s3_env.stop_s3()
        try:
            ckpt.save(2, {"model": model})          # returns after staging, S3 or not
            steps = train_until(lambda: not ckpt.in_flight(), model)
            failed = ckpt.wait()
        finally:
            s3_env.start_s3()
        assert steps >= 5                            # the loop kept stepping during the outage
        assert not failed.ok and failed.step == 2 and failed.error
        assert ckpt.latest_step() == 1               # nothing half-written was committed
        assert not ckpt.store.is_committed(2)
        ckpt.save(3, {"model": model})
        assert ckpt.wait().ok
        assert ckpt.committed_steps() == [1, 3]
    fresh = torch.nn.Linear(64, 64)
    assert CheckpointManager(s3_uri).load({"model": fresh}) == 3
    assert torch.equal(fresh.weight, model.weight)


def test_short_outage_is_bridged_by_retries(s3_env, s3_uri, transport):
    model = torch.nn.Linear(64, 64)
    with manager(s3_uri, transport, retry_timeout_s=60.0) as ckpt:
        s3_env.stop_s3()
        restarted = threading.Timer(1.5, s3_env.start_s3)
        try:
            ckpt.save(1, {"model": model})
            restarted.start()
            steps = train_until(lambda: not ckpt.in_flight(), model)
            result = ckpt.wait()
        finally:
            restarted.join()
            if not s3_env.running("minio"):
                s3_env.start_s3()
        assert result.ok, result.error
        assert steps >= 5
        assert ckpt.latest_step() == 1
        assert ckpt.store.is_committed(1)
        assert layout.MANIFEST in ckpt.store.list_files(1)
