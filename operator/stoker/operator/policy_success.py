"""Success policy: the job Succeeded only when training finished on every worker. Pure.

torchrun agents exit 0 only after their worker group finished, and they finish
together (the elastic agent's exit barrier). One pod exiting 0 early is therefore
not success: we wait until no worker of the current incarnation is still active or
failed, and at least spec.minReplicas of them succeeded.
"""
from __future__ import annotations

from typing import Any, Sequence

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


def ended_early(workers: Sequence[Any], incarnation: int) -> tuple[str, str] | None:
    """(reason, message) when the trainers ended before their last step on purpose: a token
    budget or early stopping (stoker.worker.stopping; the first word of the message is the reason)."""
    for w in workers:
        said = getattr(w, "finish_reason", "") or ""
        if said and int(getattr(w, "incarnation", incarnation)) == incarnation:
            word = said.split(":", 1)[0].strip()
            return (word if word.isidentifier() and word[:1].isupper() else "EndedEarly"), said
    return None


def success(ps: Pass) -> Plan | None:
    b = ps.b
    if not succeeded(ps.job, b.active, b.succeeded, b.failed):
        return None
    reason, message = ended_early(ps.obs.workers, ps.incarnation) or (
        "AllWorkersSucceeded", f"all {len(b.succeeded)} workers finished training")
    ps.finish("Succeeded", reason, message)
    ps.delete(ps.cleanup())
    return ps.done()
