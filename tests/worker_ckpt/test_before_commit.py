"""CheckpointManager's ``before_commit`` hook (a fault-injection point): it runs
once every shard and DCP's .metadata are stored and before anything is committed,
and a failing hook does not fail the save."""
import threading

import pytest
import torch

from stoker.common import layout
from stoker.worker.checkpoint import CheckpointManager

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("async_mode", ["async", "disabled"])
def test_the_hook_sees_the_stored_shards_and_no_commit(tmp_path, async_mode):
    seen = []

    def hook(step):
        d = tmp_path / layout.step_dir(step)
        seen.append((step, {p.name for p in d.iterdir()}, mgr.latest_step(), threading.current_thread().name))

    mgr = CheckpointManager(str(tmp_path), async_mode=async_mode, before_commit=hook)
    model = torch.nn.Linear(8, 8)
    for step in (1, 2):
        mgr.save(step, {"model": model, "train": {"step": step}})
        mgr.wait()
    mgr.close()
    assert [s for s, *_ in seen] == [1, 2]
    step, files, latest, thread = seen[1]
    assert layout.DCP_METADATA in files and any(f.endswith(".distcp") for f in files), files
    assert layout.COMMIT_MARKER not in files and layout.MANIFEST not in files, files
    assert latest == 1, "while the hook runs, readers still see the previous checkpoint"
    assert thread.startswith("stoker-ckpt") == (async_mode == "async")
    assert mgr.latest_step() == 2


def test_a_failing_hook_does_not_fail_the_save(tmp_path):
    def hook(step):
        raise RuntimeError("injected")

    with CheckpointManager(str(tmp_path), async_mode="disabled", before_commit=hook) as mgr:
        mgr.save(3, {"train": {"step": 3}})
        assert mgr.last_result.ok and mgr.latest_step() == 3
