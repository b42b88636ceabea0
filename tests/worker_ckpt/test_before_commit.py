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


@pytest.mark.parametrize("async_mode", ["async", "disabled"])
def test_on_committed_runs_on_the_coordinator_once_the_marker_is_stored_before_the_outcome(tmp_path, async_mode):
    """The step journal's witness of a commit (``on_committed``): called after COMMITTED is
    stored and before ``on_result`` (which a kill while the outcome is passed to the other
    ranks would never reach); not called for a save that did not commit."""
    events = []

    def committed(step):
        events.append(("committed", step, (tmp_path / layout.step_dir(step) / layout.COMMIT_MARKER).exists()))

    with CheckpointManager(str(tmp_path), async_mode=async_mode, on_committed=committed,
                           on_result=lambda r: events.append(("result", r.step, r.ok))) as mgr:
        mgr.save(4, {"model": torch.nn.Linear(4, 4), "train": {"step": 4}})
        mgr.wait()
    assert events == [("committed", 4, True), ("result", 4, True)]
