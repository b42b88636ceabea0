"""Success policy: the job Succeeded only when training finished on every worker. Pure.

torchrun agents exit 0 only after their worker group finished, and they finish
together (the elastic agent's exit barrier). One pod exiting 0 early is therefore
not success: we wait until no worker of the current incarnation is still active or
failed, and at least spec.minReplicas of them succeeded.
"""
from __future__ import annotations

from typing import Sequence

from .jobspec import JobView
from .pass_state import Pass, Plan
from .podview import PodView


def succeeded(job: JobView, active: Sequence[PodView], succeeded: Sequence[PodView],
              failed: Sequence[PodView]) -> bool:
    if failed or active or not succeeded:
        return False
    return len({p.index for p in succeeded}) >= min(job.min_replicas, job.replicas)


def finishing(succeeded: Sequence[PodView]) -> bool:
    """Once any worker succeeded the run is ending: do not start replacements."""
    return bool(succeeded)


def success(ps: Pass) -> Plan | None:
    b = ps.b
    if not succeeded(ps.job, b.active, b.succeeded, b.failed):
        return None
    ps.finish("Succeeded", "AllWorkersSucceeded", f"all {len(b.succeeded)} workers finished training")
    ps.delete(ps.cleanup())
    return ps.done()
