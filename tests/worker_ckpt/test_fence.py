"""Fencing (issue 12): once a newer incarnation has opened the checkpoints, a worker of an older
one (a partitioned node that came back, a stopped process continued) commits nothing, clears
nothing and deletes nothing."""
import pytest
import torch

from stoker.common import layout
from stoker.worker.checkpoint import CheckpointManager
from stoker.worker.checkpoint.fence import incarnation_from_env

pytestmark = [pytest.mark.torch]


def state(value: float) -> dict:
    m = torch.nn.Linear(4, 4)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return {"model": m.state_dict()}


def test_an_older_incarnation_changes_no_checkpoint_after_its_replacement_started(tmp_path, caplog):
    old = CheckpointManager(str(tmp_path), keep=1, async_mode="disabled", incarnation=0)
    assert old.load(state(0.0)) is None            # incarnation 0 starts: the fence names it
    old.save(5, state(1.0))
    assert old.last_result.ok
    new = CheckpointManager(str(tmp_path), keep=1, async_mode="disabled", incarnation=1)
    assert new.load(state(0.0)) == 5               # the replacement resumes and raises the fence
    new.save(10, state(2.0))
    assert new.last_result.ok and old.store.is_committed(10)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    # the old worker comes back: a save of a step the replacement also wrote, one of its own
    for step in (10, 15):
        old.save(step, state(9.0))
        assert not old.last_result.ok and "fenced" in old.last_result.error, old.last_result
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before                         # nothing written, cleared or deleted: stopped at prepare
    # the coordinator says so at once, before telling the other ranks (a partitioned one may wait for ever there)
    said = [r.getMessage().split(" error=")[0] for r in caplog.records if r.name == "stoker.worker.checkpoint"
            and "step=15" in r.getMessage() and r.levelname == "ERROR"]
    assert said == ["checkpoint.not_committed step=15 phase=prepare", "checkpoint.failed step=15 phase=prepare"]
    assert old.store.list_steps() == [10] and new.committed_steps() == [10]
    # the manifest says which incarnation committed
    assert b'"incarnation": 1' in (tmp_path / layout.step_dir(10) / layout.MANIFEST).read_bytes()
    with pytest.raises(ValueError, match="superseded by incarnation 1"):
        old.load(state(0.0))                       # and it cannot start over from them either


def test_without_an_incarnation_nothing_is_fenced(tmp_path):
    assert incarnation_from_env({}) is None and incarnation_from_env({"STOKER_INCARNATION": "3"}) == 3
    plain = CheckpointManager(str(tmp_path), keep=2, async_mode="disabled", incarnation=None)
    plain.save(1, state(1.0))
    assert plain.last_result.ok and not (tmp_path / layout.FENCE).exists()


def test_the_fence_is_raised_never_lowered_and_read_back_on_each_store(uri):
    from stoker.worker.checkpoint import fence
    from stoker.worker.checkpoint.store import open_store

    store = open_store(str(uri))
    assert fence.current(store) is None            # absent: nobody claimed it yet
    fence.claim(store, 2)
    fence.claim(store, 2)                          # the same incarnation again: fine
    assert fence.current(store) == 2
    fence.check(store, 2)
    with pytest.raises(fence.Fenced, match="superseded by incarnation 2"):
        fence.claim(store, 1)
    with pytest.raises(fence.Fenced, match="fenced: incarnation 1"):
        fence.check(store, 1)
    assert fence.current(store) == 2
