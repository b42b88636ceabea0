"""Sharded checkpoints (torch DCP) to S3 or a local directory, complete-or-never-used.

    from stoker.worker.checkpoint import CheckpointManager

    ckpt = CheckpointManager(os.environ["STOKER_CHECKPOINT_URI"], keep=3, async_mode="async")
    state = {"model": model_stateful, "optimizer": optim_stateful, "train": train_state}
    start = ckpt.load(state) or 0          # newest COMMITTED step, loaded in place
    for step in range(start + 1, total + 1):
        ...
        if step % every == 0:
            ckpt.save(step, state)         # returns after copying to CPU
    ckpt.close()                           # waits for the last upload

See ``manager.py`` for the commit protocol.
"""
import importlib

_EXPORTS = {"CheckpointManager": ".manager", "SaveResult": ".manager", "LocalStore": ".store", "Store": ".store",
            "open_store": ".store"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The names above, imported on first use: ``stoker.worker.checkpoint.s3client`` and
    ``.retry`` are used without torch (the shard download process)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
