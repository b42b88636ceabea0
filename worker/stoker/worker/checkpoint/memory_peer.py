"""The in-memory tier's copy on a peer (issue 12): a pod lost with its memory does not take its ranks'
snapshots along.

After each snapshot, rank r sends it to rank (r + 1) % W (``ring_share``), which keeps it in its own pod's
memory under ``peer/rank-r-of-W/step-S/`` (``MemoryTier.store_peer``; written and renamed into place like a
snapshot of its own, the newest ``KEEP``). The bytes travel over the training's process group (gloo; beside
NCCL, a gloo group of its own: ``exchange_group``), so they cross the network between pods; nothing is read
from another pod's memory.

A restore (``plan``) looks at what every pod holds, its ranks' own snapshots and its peer copies, and takes
the newest step held for every rank of the world, not older than the newest committed S3 checkpoint (the
tier's rule, with peers). Ranks are assigned again when a round forms (a hot spare took a
lost pod's place, or joined after a crash), so a snapshot is often on another pod than its rank's: its holder
sends it there (``fetch``). Every rank reads what it will send first and says so (``gather``): a missing or
unreadable snapshot sends every rank to S3 before any transfer starts, so no rank waits on a send that never
comes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger("stoker.worker.checkpoint")


def exchange_group() -> Any:
    """The group the tier's bytes travel in: the default one under gloo, else a gloo group of the
    same ranks (a collective: every rank calls it, at the same point)."""
    if not dist.is_initialized():
        return None
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _send(blob: bytes, dst: int, group: Any) -> list[Any]:
    """``blob`` (never empty: a ``_pack``) to ``dst``, its size first."""
    size = torch.tensor([len(blob)], dtype=torch.int64)
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return [dist.isend(size, dst, group=group), dist.isend(data, dst, group=group)]


def _recv(src: int, group: Any) -> bytes:
    size = torch.empty(1, dtype=torch.int64)
    dist.recv(size, src, group=group)
    data = torch.empty(int(size.item()), dtype=torch.uint8)
    dist.recv(data, src, group=group)
    return data.numpy().tobytes()


def _pack(state: bytes, manifest: str) -> bytes:
    head = manifest.encode()
    return len(head).to_bytes(8, "little") + head + state


def _unpack(blob: bytes) -> tuple[bytes, str]:
    n = int.from_bytes(blob[:8], "little")
    return blob[8 + n:], blob[8:8 + n].decode()


def ring_share(tier: Any, step: int, state: bytes, manifest: str, rank: int, world: int, group: Any) -> None:
    """Send this rank's snapshot of ``step`` to the next rank, keep the previous rank's (a collective)."""
    if world < 2:
        return
    reqs = _send(_pack(state, manifest), (rank + 1) % world, group)
    got = _recv((rank - 1) % world, group)
    for r in reqs:
        r.wait()
    tier.store_peer((rank - 1) % world, step, *_unpack(got))


def plan(held_by_rank: Sequence[Sequence[Sequence[int]]], world: int,
         s3_step: int | None) -> tuple[int, list[int]] | None:
    """(the step, the rank holding each rank's snapshot of it), or None (resume from S3).

    ``held_by_rank[h]``: the (rank, step) snapshots rank ``h``'s pod holds, its own and its peer copies.
    A rank that holds its own snapshot is its own holder (nothing to send); else the lowest rank holding it."""
    where: dict[tuple[int, int], list[int]] = {}
    for holder, held in enumerate(held_by_rank):
        for r, s in held:
            where.setdefault((int(r), int(s)), []).append(holder)
    steps = {s for (_, s) in where}
    full = [s for s in steps if all((r, s) in where for r in range(world))]
    if not full:
        return None
    step = max(full)
    if s3_step is not None and step < s3_step:
        return None
    return step, [r if r in where[(r, step)] else min(where[(r, step)]) for r in range(world)]


def fetch(tier: Any, step: int, holders: Sequence[int], rank: int, group: Any,
          gather: Callable[[Any], list[Any]]) -> tuple[bytes, str] | None:
    """This rank's snapshot of ``step`` (state bytes, manifest), from its own pod or from its holder (a
    collective: every rank sends what it holds for others). None on every rank when any holder could
    not read what it must send (the caller resumes from S3)."""
    outgoing: dict[int, bytes] = {}
    error = None
    try:
        for r, h in enumerate(holders):
            if h == rank:
                outgoing[r] = _pack(*tier.read(r, step))
    except OSError as exc:
        error = repr(exc)
    errors = [e for e in gather(error) if e]
    if errors:
        log.warning("trainer.memory_peer_unreadable step=%d errors=%s: resuming from S3", step, errors)
        return None
    mine = outgoing.pop(rank, None)
    for r in range(len(holders)):   # one pair at a time, in the same order on every rank: no deadlock
        if holders[r] == r:
            continue
        if rank == holders[r]:
            for req in _send(outgoing[r], r, group):
                req.wait()
        elif rank == r:
            mine = _recv(holders[r], group)
    assert mine is not None
    return _unpack(mine)
