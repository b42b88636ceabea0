"""A checkpoint is complete or never used: a job SIGKILLed in the middle of a
save leaves a folder without COMMITTED, and resume takes the previous one."""
import os
import signal
import subprocess

import pytest
import torch

from stoker.common import layout
from stoker.worker.checkpoint import CheckpointManager

from .helpers import job_env, torchrun_argv, wait_for

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def model():
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))


@pytest.mark.parametrize("where", ["shards", "commit"])
def test_killed_save_is_ignored_and_previous_checkpoint_loads(tmp_path, where):
    uri, signals = tmp_path / "ckpt", tmp_path / "signals"
    signals.mkdir()
    job = subprocess.Popen(torchrun_argv(2, "kill_mid_save.py", uri, signals, where), env=job_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: any(signals.glob("stalled-*")), 180, "a rank to stall inside the step-2 save", job)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the whole job: agent and both ranks
        job.wait()
        job.stdout.close()

    partial = uri / layout.step_dir(2)
    files = {p.name for p in partial.iterdir()}
    assert any(name.endswith(".distcp") for name in files), files   # shards were written ...
    assert layout.COMMIT_MARKER not in files                        # ... but never committed
    if where == "commit":
        assert layout.DCP_METADATA in files  # DCP's own metadata alone does not make it usable

    mgr = CheckpointManager(str(uri), async_mode="disabled")
    assert mgr.latest_step() == 1
    fresh, train = model(), {"step": -1}
    assert mgr.load({"model": fresh, "train": train}) == 1
    assert train["step"] == 1
    assert all(torch.all(p == 1.0) for p in fresh.parameters())
    with pytest.raises(ValueError, match="not committed"):
        mgr.load({"model": fresh, "train": train}, step=2)

    # the next save of that step replaces the partial folder and commits it
    with torch.no_grad():
        for p in fresh.parameters():
            p.fill_(2.0)
    mgr.save(2, {"model": fresh, "train": {"step": 2}})
    assert mgr.last_result.ok and mgr.latest_step() == 2
    mgr.close()
