"""How the trainer treats the checkpoints it resumes from and the ones it holds back
for tests (``debug.slow_checkpoint_at_step``)."""
from __future__ import annotations

import logging

from stoker.worker.config import DebugConfig

log = logging.getLogger("stoker.worker.trainer")

SLOW_CHECKPOINT_DEFAULT_S = 3600.0  # debug.slow_checkpoint_seconds unset: until the test kills us


def checkpoint_world_size(ckpt, step: int) -> int | None:
    """The world size that wrote checkpoint ``step`` (from its manifest); None if unreadable."""
    from stoker.common import layout
    from stoker.worker.checkpoint.store import read_json

    try:
        return int(read_json(ckpt.store, step, layout.MANIFEST)["world_size"])
    except Exception:  # noqa: BLE001 - informational only: the load itself already succeeded
        log.warning("trainer.manifest_unreadable step=%d", step)
        return None


def slow_checkpoint_due(debug: DebugConfig, step: int, resumed_from: int | None) -> bool:
    """Whether the save of ``step`` holds back its commit (``debug.slow_checkpoint_at_step``).
    Never in a run that resumed from a checkpoint: a recovered incarnation redoing
    that step must commit it."""
    return debug.slow_checkpoint_at_step == step and resumed_from is None
