"""Which checkpoint folders to delete: a pure decision over what is stored."""
from __future__ import annotations


def plan_deletions(all_steps: list[int], committed: list[int], keep: int) -> list[int]:
    """Steps whose folders can be deleted, oldest first.

    - the newest ``keep`` committed checkpoints are kept, older committed ones go;
    - partial folders (no commit marker) older than the newest committed one are
      abandoned writes and go;
    - partial folders newer than the newest committed one are left alone (a save
      may be writing them right now);
    - the newest committed checkpoint is never deleted.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    done = sorted(set(committed))
    if not done:
        return []
    kept = set(done[-keep:])
    newest = done[-1]
    doomed = {s for s in done if s not in kept}
    doomed |= {s for s in set(all_steps) - set(done) if s < newest}
    doomed.discard(newest)
    return sorted(doomed)
