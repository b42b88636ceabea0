"""Fencing: a worker of an older incarnation never changes the checkpoints once its replacement
has started (a partitioned node that comes back, a SIGSTOPped process that is continued).

The checkpoint root holds ``FENCE`` (``stoker.common.layout``): the newest incarnation that has
started, as JSON. The coordinator of each incarnation raises it when it opens the checkpoints to
resume (``claim``, never lowering it), and checks it (``check``) before every change it makes
there: clearing a partial folder before a save, the commit (manifest + ``COMMITTED``) and the
retention's deletions. An older incarnation finds a newer fence and stops (``Fenced``): its save
fails, nothing is written or deleted. Incarnations come from ``STOKER_INCARNATION`` (set by the
operator on its pods); without it (plain torchrun) there is nothing to fence.

Residual window: the check and the write are two requests, not one conditional write. A worker
stopped exactly between them (milliseconds) and continued after its replacement claimed the
fence could still commit that one save: a complete checkpoint of its own (every shard verified),
not a mix, unless the replacement was writing the same step at that moment.
"""
from __future__ import annotations

import json
import os

from stoker.common import env, layout


class Fenced(RuntimeError):
    """This worker's incarnation was superseded: it must not change the checkpoints."""


def incarnation_from_env(environ: dict[str, str] | None = None) -> int | None:
    value = (os.environ if environ is None else environ).get(env.INCARNATION, "")
    return int(value) if value.strip().isdigit() else None


def current(store) -> int | None:
    """The incarnation the fence names (None: no fence yet)."""
    raw = store.read_root(layout.FENCE)
    return None if raw is None else int(json.loads(raw)["incarnation"])


def claim(store, incarnation: int | None) -> None:
    """Raise the fence to ``incarnation`` (the coordinator, as its incarnation opens the checkpoints);
    ``Fenced`` if a newer one already holds it."""
    if incarnation is None:
        return
    held = current(store)
    if held is not None and held > incarnation:
        raise Fenced(f"incarnation {incarnation} was superseded by incarnation {held} (checkpoint fence)")
    if held != incarnation:
        store.write_root(layout.FENCE, json.dumps({"incarnation": incarnation}).encode())


def check(store, incarnation: int | None) -> None:
    """``Fenced`` if a newer incarnation than ``incarnation`` has claimed the checkpoints."""
    if incarnation is None:
        return
    held = current(store)
    if held is not None and held > incarnation:
        raise Fenced(f"fenced: incarnation {incarnation} was superseded by incarnation {held}; this worker "
                     "changes no checkpoint (a partitioned or stopped worker that came back)")
