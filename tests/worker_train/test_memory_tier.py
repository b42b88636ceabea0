"""The in-memory checkpoint tier (checkpoint/memory.py, ``checkpoint.memory_every``).

A run that keeps each rank's state in memory every step and checkpoints to "S3" (a local
folder) every 2 steps is SIGKILLed (every process) after step N+1, one step past the last
committed checkpoint. The same command line again, which is what an in-place restart is
(same pods, same world, the memory folder still there), must resume from the in-memory
snapshot of step N+1, not from the committed step N, compute no step of those twice, and end
bit-identical to an undisturbed run. Then the rule that picks memory over S3 (``memory_peer.plan``, with peer copies),
and a snapshot that is not complete or belongs to another world size is never used.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stoker.worker import journal
from stoker.worker.checkpoint.memory import MANIFEST, MemoryTier
from stoker.worker.checkpoint.memory_peer import plan

from . import harness as h

N = 4
LAYOUTS = [("zero3", 2, {}), ("zero1", 2, {}), ("pipeline-1f1b", 2, {"pp": 2})]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode, nproc, extra", LAYOUTS, ids=[f"{m}-{n}" for m, n, _ in LAYOUTS])
def test_a_killed_run_resumes_from_the_in_memory_snapshot_past_the_last_commit_bit_identical(
        tmp_path: Path, monkeypatch, mode, nproc, extra):
    monkeypatch.setenv("STOKER_MEMORY_DIR", str(tmp_path / "shm"))
    monkeypatch.setenv("STOKER_STEP_JOURNAL_DIR", str(tmp_path / "journal"))
    parallel = {"mode": mode, **extra}
    straight = h.run(tmp_path, "straight", h.base_config(tmp_path, "straight", parallel=parallel,
                                                          train={"steps": 2 * N}), nproc)
    cfg = h.base_config(tmp_path, "job", parallel=parallel, train={"steps": 2 * N},
                        checkpoint={"uri": str(tmp_path / "ckpt"), "interval": 2, "memory_every": 1},
                        debug={"stall_after_step": N + 1})
    h.run_until_then_kill9(tmp_path, "job", cfg, nproc, ready=lambda: h.stalled(cfg))
    held = sorted((tmp_path / "shm").glob("local/inc-0/pod/rank-*-of-*/step-*"))
    assert [p.name for p in held] == [f"step-{N}", f"step-{N + 1}"] * nproc, held

    cfg["debug"] = {}
    resumed = h.run(tmp_path, "job", cfg, nproc)
    assert resumed["summary"]["resumed_from"] == N + 1, "the in-memory snapshot past the last commit was not used"
    assert resumed["summary"]["checksum"] == straight["summary"]["checksum"], "parameters differ after resume"
    assert h.losses(resumed["metrics"]) == h.losses(straight["metrics"])
    assert [m["step"] for m in resumed["metrics"] if "loss" in m] == list(range(1, 2 * N + 1))
    assert not list((tmp_path / "shm").iterdir()), "a finished run leaves memory behind"
    # the journal names each run's world (the same incarnation throughout, as a restart in place keeps it)
    worlds: dict[str, set[int]] = {}
    for r in journal.read(tmp_path / "journal"):
        worlds.setdefault(r.get("world"), set()).add(r["rank"])
    assert len(worlds) == 3 and all(ranks == set(range(nproc)) for ranks in worlds.values()), worlds


def own(*steps_by_rank):
    """What each rank's pod holds when every rank holds only its own snapshots."""
    return [[(r, s) for s in steps] for r, steps in enumerate(steps_by_rank)]


def test_memory_is_used_only_when_every_rank_holds_a_step_not_older_than_s3():
    assert plan(own([3, 4], [3, 4]), 2, s3_step=2) == (4, [0, 1])
    assert plan(own([3, 4], [3]), 2, s3_step=2) == (3, [0, 1])  # a rank killed mid-save of 4 holds only 3
    assert plan(own([3, 4], [3, 4]), 2, s3_step=4) == (4, [0, 1])  # the same step: memory is the faster read
    assert plan(own([3, 4], [3, 4]), 2, s3_step=6) is None  # S3 is newer
    assert plan(own([3, 4], []), 2, s3_step=None) is None  # a rank with nothing (a new pod)
    assert plan(own([3], [4]), 2, s3_step=None) is None
    assert plan(own([5]), 1, s3_step=None) == (5, [0])


def test_a_lost_pods_ranks_are_restored_from_their_peer_copies():
    # rank 1's pod was lost; a spare is rank 1 now (it holds nothing); rank 0's pod holds its own snapshots
    # and, as peer copies, the lost rank 1's: rank 0 sends rank 1's to the spare
    assert plan([[(0, 3), (0, 4), (1, 3), (1, 4)], []], 2, s3_step=2) == (4, [0, 0])
    # the ranks were assigned again: the survivor is rank 1 now and holds rank 0's (its own, before) and
    # rank 1's (a peer copy): it keeps rank 1's and sends rank 0's to the spare, now rank 0
    assert plan([[], [(0, 4), (1, 4)]], 2, s3_step=None) == (4, [1, 1])
    # 3 ranks, the pod of rank 2 lost: rank 2's copy is on rank 0's pod
    assert plan([[(0, 6), (2, 6)], [(1, 6), (0, 6)], []], 3, s3_step=5) == (6, [0, 1, 0])
    # two neighbours lost: rank 1's snapshot was only on rank 1's pod and rank 2's
    assert plan([[(0, 6), (2, 6)], [], []], 3, s3_step=None) is None


@pytest.mark.torch
def test_a_snapshot_is_held_only_once_complete_and_only_for_its_rank_and_world_size(tmp_path: Path):
    tier = MemoryTier(tmp_path / "job" / "inc-3" / "pod-a", rank=1, world_size=2)
    tier.save(7, {"w": torch.arange(4.0)}, {"world_size": 2})
    (tier.dir / ".step-8.tmp").mkdir()  # a save killed mid-write
    (tier.dir / "step-9").mkdir()  # renamed without its manifest: never happens, never used
    assert tier.held() == [7]
    state = {"w": torch.zeros(4)}
    assert tier.load(7, state)["world_size"] == 2 and torch.equal(state["w"], torch.arange(4.0))
    assert MemoryTier(tmp_path / "job" / "inc-3" / "pod-a", rank=1, world_size=3).held() == []
    assert MemoryTier(tmp_path / "job" / "inc-3" / "pod-a", rank=0, world_size=2).held() == []
    assert MemoryTier(tmp_path / "job" / "inc-3" / "pod-b", rank=1, world_size=2).held() == [], "another pod's"
    for step in (10, 11, 12):
        tier.save(step, {"w": torch.full((4,), float(step))}, {})
    assert tier.held() == [11, 12], "only the newest two are kept"
    assert (tier.dir / "step-12" / MANIFEST).is_file()
    tier.save(9, {"w": torch.zeros(4)}, {})  # after a health rollback to 8: 11 and 12 are another timeline
    assert tier.held() == [9], "a snapshot past a rollback point could be resumed from"
    tier.save(10, {"w": torch.zeros(4)}, {})
    tier.forget_after(9)  # the trainer's rollback itself, before the next save
    assert tier.held() == [9]
    MemoryTier(tmp_path / "job" / "inc-4" / "pod-c", rank=0, world_size=2)  # a new incarnation of the job
    assert not (tmp_path / "job" / "inc-3").exists(), "an older incarnation's memory was left behind"
