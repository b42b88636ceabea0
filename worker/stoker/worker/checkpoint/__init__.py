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
from .manager import CheckpointManager, SaveResult
from .store import LocalStore, Store, open_store

__all__ = ["CheckpointManager", "LocalStore", "SaveResult", "Store", "open_store"]
