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


def resume_from_memory(tier, s3_step: int | None, state: dict, gather) -> tuple[int, dict] | None:
    """``checkpoint.memory_every``: the newest in-memory snapshot held for every rank (in its own pod or,
    as a peer copy, in the next rank's: ``memory_peer``), loaded into ``state``, when it is not older than
    ``s3_step`` (the newest committed S3 checkpoint); (step, manifest), or None to resume from S3
    (``gather``: all ranks' values of one, in rank order)."""
    from stoker.worker.checkpoint import memory_peer
    from stoker.worker.state import refuse_fresh_optimizers

    pods = gather((str(tier.pod_dir), tier.held_all()))
    held = [h for _, h in pods]
    owned = [r for r, (pod, _) in enumerate(pods) if pod == str(tier.pod_dir)]
    chosen = memory_peer.plan(held, tier.world, s3_step)
    if chosen is None:
        log.info("trainer.memory_not_used held_by_rank=%s s3_step=%s", held, s3_step)
        tier.keep_only(owned)
        return None
    step, holders = chosen
    refuse_fresh_optimizers(state)
    manifest, error = None, None
    got = memory_peer.fetch(tier, step, holders, tier.rank, tier.group, gather)
    if got is None:
        tier.keep_only(owned)
        return None
    try:
        manifest = tier.load_bytes(*got, state)
    except Exception as exc:  # noqa: BLE001 - then every rank takes S3, which reloads the whole state
        error = repr(exc)
    errors = [e for e in gather(error) if e]
    tier.keep_only(owned)   # every rank has loaded (the gather above): nothing reads them any more
    if errors:
        log.warning("trainer.memory_load_failed step=%d errors=%s: resuming from S3", step, errors)
        return None
    tier.forget_after(step)
    log.info("trainer.resumed_from_memory step=%d s3_step=%s dir=%s from_rank=%d", step, s3_step, tier.dir,
             holders[tier.rank])
    return step, manifest


def share_memory(tier, step: int, written: tuple[bytes, str], rank: int, world: int) -> None:
    """This rank's new snapshot to the next rank's pod, the previous rank's to this one (a collective)."""
    from stoker.worker.checkpoint import memory_peer

    memory_peer.ring_share(tier, step, *written, rank, world, tier.group)


def open_memory(every: int, rank: int, world_size: int):
    """The in-memory tier of this rank (``checkpoint.memory_every`` > 0), or None (a collective when on:
    the group its peer copies travel in)."""
    if not every:
        return None
    from stoker.worker.checkpoint import memory_peer
    from stoker.worker.checkpoint.memory import MemoryTier, default_dir

    tier = MemoryTier(default_dir(), rank, world_size)
    tier.group = memory_peer.exchange_group()
    return tier


def restore(trainer):
    """Open the checkpoint location and load state: resume from the pod's in-memory tier
    when every rank holds a snapshot not older than the newest COMMITTED checkpoint
    (``checkpoint.memory_every``, an in-place restart), else from that checkpoint (the whole
    state: this is how a job recovers), else take only the weights from
    ``checkpoint.init_from`` (fresh optimizer, step 0: continued pretraining).
    Returns (manager or None, step)."""
    from stoker.worker.checkpoint import CheckpointManager
    from stoker.worker.state import MODEL

    c = trainer.cfg.checkpoint
    ckpt, resumed_from, manifest = None, None, None
    if c.uri:
        ckpt = CheckpointManager(c.uri, keep=c.keep, async_mode=c.async_mode,
                                 on_result=trainer.session.report_checkpoint, before_commit=trainer.before_commit,
                                 on_committed=trainer.session.journal_commit)
    if ckpt is not None or trainer.memory is not None:
        trainer.session.set_phase("RESTORING")
    s3_step = ckpt.claim() if ckpt is not None else None  # raises the fence, from memory or not
    in_memory = trainer.memory and resume_from_memory(trainer.memory, s3_step, trainer.checkpoint_state,
                                                      trainer.gather)
    if in_memory:
        resumed_from, manifest = in_memory
        trainer.session.journal_resume_from_memory(resumed_from)
    elif ckpt is not None:
        resumed_from = ckpt.load_claimed(trainer.checkpoint_state, s3_step)
        trainer.session.set_last_committed_step(resumed_from)
        manifest = read_manifest(ckpt, resumed_from) if resumed_from is not None else None
    trainer.resumed_from = resumed_from
    if resumed_from is not None:
        trainer.resumed_world_size = checkpoint_world_size(manifest)
        trainer.adopt_manifest(manifest)
        # resharded=True: DCP redistributed state saved by another number of ranks
        log.info("trainer.resumed step=%d uri=%s from=%s checkpoint_world_size=%s world_size=%d resharded=%s",
                 resumed_from, c.uri, "memory" if in_memory else "s3", trainer.resumed_world_size, trainer.world,
                 trainer.resumed_world_size is not None and trainer.resumed_world_size != trainer.world)
        if trainer.train_state.step != resumed_from:
            raise RuntimeError(f"checkpoint step {resumed_from} holds train_state.step={trainer.train_state.step}")
    elif c.init_from:
        load_init_from(c.init_from, {MODEL: trainer.checkpoint_state[MODEL]})
    return ckpt, resumed_from
