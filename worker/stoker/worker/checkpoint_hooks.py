"""How the trainer treats the checkpoints it resumes from and the ones it holds back
for tests (``debug.slow_checkpoint_at_step``)."""
from __future__ import annotations

import logging
import time

from stoker.worker.config import DebugConfig

log = logging.getLogger("stoker.worker.trainer")

SLOW_CHECKPOINT_DEFAULT_S = 3600.0  # debug.slow_checkpoint_seconds unset: until the test kills us


def load_init_from(uri: str, state: dict) -> None:
    """``checkpoint.init_from``: only the weights of the newest committed checkpoint under ``uri``."""
    from stoker.worker.checkpoint import CheckpointManager

    src = CheckpointManager(uri, keep=1, async_mode="disabled")
    try:
        got = src.load(state)
    finally:
        src.close()
    if got is None:
        raise FileNotFoundError(f"checkpoint.init_from: no committed checkpoint under {uri!r}")
    log.info("trainer.init_from uri=%s step=%d", uri, got)


def read_manifest(ckpt, step: int) -> dict | None:
    """The commit manifest of checkpoint ``step`` (stoker.json); None if unreadable."""
    from stoker.common import layout
    from stoker.worker.checkpoint.store import read_json

    try:
        return read_json(ckpt.store, step, layout.MANIFEST)
    except Exception:  # noqa: BLE001 - the load itself already succeeded; callers say what is missing
        log.warning("trainer.manifest_unreadable step=%d", step)
        return None


def checkpoint_world_size(manifest: dict | None) -> int | None:
    """The world size that wrote a checkpoint, from its manifest."""
    try:
        return int(manifest["world_size"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def slow_checkpoint_due(debug: DebugConfig, step: int, resumed_from: int | None) -> bool:
    """Whether the save of ``step`` holds back its commit (``debug.slow_checkpoint_at_step``).
    Never in a run that resumed from a checkpoint: a recovered incarnation redoing
    that step must commit it."""
    return debug.slow_checkpoint_at_step == step and resumed_from is None


def hold_commit(debug: DebugConfig, step: int, resumed_from: int | None) -> None:
    """The checkpoint manager's ``before_commit`` hook: the save of ``debug.slow_checkpoint_at_step``
    sleeps ``slow_checkpoint_seconds`` (on the checkpoint thread) between its stored shards and its commit."""
    if not slow_checkpoint_due(debug, step, resumed_from):
        return
    seconds = debug.slow_checkpoint_seconds or SLOW_CHECKPOINT_DEFAULT_S
    log.warning("checkpoint.slow_write step=%d seconds=%g: shards and metadata stored, commit held back "
                "(debug.slow_checkpoint_at_step)", step, seconds)
    time.sleep(seconds)
