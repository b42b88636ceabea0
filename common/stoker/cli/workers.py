"""Which worker pods `--rank N` and `--replica I` mean (`stoker logs`, `stoker restart`).

Two numbers name a worker, and they differ:

- the **replica index** I: the pod's place in the job, `<job>-worker-<I>-<incarnation>`,
  label ``stoker.dev/replica-index``; stable across restarts;
- the **global rank** N: torch's ``RANK`` of a training process, what the incident table
  (`stoker describe`), the heartbeats and the metrics' ``rank`` label report. torchrun's
  rendezvous hands ranks out per round, so rank N need not live in replica N, and with
  ``nprocPerNode > 1`` one pod holds several ranks.

``--rank`` resolves through the ranks the workers last reported
(``status.workerHeartbeats[].rank/pod``); ``--replica`` through the pod label.
"""
from __future__ import annotations

from typing import Any, Mapping

from . import facts
from .kubeclient import EXIT_NOT_FOUND, CliError


def add_arguments(p, verb: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rank", type=int, default=None, metavar="N",
                   help=f"{verb} the pod running global rank N (torch RANK, as in `stoker describe`'s incidents)")
    g.add_argument("--replica", type=int, default=None, metavar="I",
                   help=f"{verb} the pod with replica index I (<job>-worker-I-<incarnation>)")


def rank_pods(job: Mapping[str, Any]) -> dict[int, str]:
    """Global rank -> pod name, from what the current incarnation's workers last reported."""
    out: dict[int, str] = {}
    for beat in (job.get("status") or {}).get("workerHeartbeats") or []:
        if beat.get("rank") is not None and beat.get("pod"):
            out[int(beat["rank"])] = str(beat["pod"])
    return out


def select(job: Mapping[str, Any], pods: list[dict], rank: int | None = None,
           replica: int | None = None) -> list[dict]:
    """The current worker pods `--rank`/`--replica` pick (all of them with neither).
    Raises CliError(EXIT_NOT_FOUND) naming what exists when nothing matches."""
    workers = facts.current_workers(pods)
    name = (job.get("metadata") or {}).get("name", "")
    if replica is not None:
        found = [p for p in workers if facts.worker_index(p) == replica]
        if not found:
            have = ", ".join(str(facts.worker_index(p)) for p in workers) or "none"
            raise CliError(f"job {name} has no worker with replica index {replica} (replicas now: {have})",
                           EXIT_NOT_FOUND)
        return found
    if rank is None:
        return workers
    ranks = rank_pods(job)
    if not ranks:
        raise CliError(f"job {name} reports no global ranks (its workers send no heartbeats yet); use --replica I, "
                       f"the pod's replica index, instead", EXIT_NOT_FOUND)
    if rank not in ranks:
        raise CliError(f"job {name} has no rank {rank} (ranks now: {', '.join(map(str, sorted(ranks)))}); "
                       f"--replica I selects by replica index", EXIT_NOT_FOUND)
    return [p for p in workers if p["metadata"]["name"] == ranks[rank]]
