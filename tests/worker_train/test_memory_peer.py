"""The in-memory tier's peer copy (checkpoint/memory_peer.py), over a real gloo process group.

Two processes stand for two pods (pod-a, pod-b): each saves its rank's snapshots and sends each one to
the next rank's pod. Pod b is then lost with its memory. A new world of two (a spare's empty pod-c as
rank 0, pod-a as rank 1: the ranks are assigned again) restores: each rank must get exactly the state
its rank saved, rank 0's sent over by pod-a, which held it as its own snapshot from before, and rank 1's
from pod-a's peer copy. With the peer copy gone too, nobody uses memory (every rank goes to S3).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch


def _world(rank: int, store: Path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def gather(value):
        everyone: list = [None, None]
        dist.all_gather_object(everyone, value)
        return everyone
    return dist, gather


def _train(rank: int, root: str) -> None:
    import torch

    from stoker.worker.checkpoint.memory import MemoryTier
    from stoker.worker.checkpoint.memory_peer import ring_share

    dist, _ = _world(rank, Path(root) / "store-1")
    tier = MemoryTier(Path(root) / ["pod-a", "pod-b"][rank], rank, 2)
    for step in (3, 4):
        written = tier.save(step, {"w": torch.full((4,), 10.0 * rank + step)}, {"world_size": 2})
        ring_share(tier, step, *written, rank, 2, None)
    dist.destroy_process_group()


def _restore(rank: int, root: str, name: str) -> None:
    import torch

    from stoker.worker.checkpoint.memory import MemoryTier
    from stoker.worker.checkpoint_hooks import resume_from_memory

    dist, gather = _world(rank, Path(root) / f"store-{name}")
    tier = MemoryTier(Path(root) / ["pod-c", "pod-a"][rank], rank, 2)
    state = {"w": torch.zeros(4)}
    got = resume_from_memory(tier, 2, state, gather)
    out = {"step": got[0] if got else None, "w": state["w"].tolist()}
    (Path(root) / f"{name}-{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def test_a_lost_pods_ranks_come_back_from_the_peer_copies_and_only_when_all_are_held(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_train, args=(str(tmp_path),), nprocs=2)
    assert snapshots(tmp_path) == [
        "pod-a/peer/rank-1-of-2/step-3", "pod-a/peer/rank-1-of-2/step-4",
        "pod-a/rank-0-of-2/step-3", "pod-a/rank-0-of-2/step-4",
        "pod-b/peer/rank-0-of-2/step-3", "pod-b/peer/rank-0-of-2/step-4",
        "pod-b/rank-1-of-2/step-3", "pod-b/rank-1-of-2/step-4"]
    shutil.rmtree(tmp_path / "pod-b")   # the node is gone, and its memory with it
    shutil.copytree(tmp_path, tmp_path.parent / "without-peer")

    mp.spawn(_restore, args=(str(tmp_path), "spare"), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"spare-{r}.json").read_text()) for r in (0, 1))
    assert r0 == {"step": 4, "w": [4.0] * 4}, "rank 0's snapshot, sent from pod-a to the spare"
    assert r1 == {"step": 4, "w": [14.0] * 4}, "rank 1's snapshot, from pod-a's peer copy"
    # pod-a is rank 1 now: what it held as rank 0 and as rank 1's peer is another world's, never used again
    assert snapshots(tmp_path) == []

    other = tmp_path.parent / "without-peer"
    shutil.rmtree(other / "pod-a" / "peer")   # rank 1's snapshot is held nowhere
    mp.spawn(_restore, args=(str(other), "none"), nprocs=2)
    for r in (0, 1):
        assert json.loads((other / f"none-{r}.json").read_text()) == {"step": None, "w": [0.0] * 4}


def snapshots(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob("pod-*/**/step-*"))
