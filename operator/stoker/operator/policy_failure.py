"""Failure policy: what a failed worker pod means for the job. Pure.

Causes:
  preemption      the scheduler preempted the pod (DisruptionTarget PreemptionByScheduler,
                  reason Preempted/Preempting). Restarts without spending the budget.
  infrastructure  the pod died for reasons outside the trainer: evictions, node loss,
                  taint-manager deletion, no exit code, killed by a signal (137/143)
                  without OOMKilled, or its agent lost the rendezvous store (86).
  userError       the trainer exited non-zero on its own (OOMKilled counts here).

Exit-code rules (spec.failurePolicy.exitCodeRules, first match wins) override the
cause for pods that have an exit code: FailJob fails the job at once, Ignore restarts
without spending the budget, RestartJob restarts and spends it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .jobspec import JobView
from .pods import PodView
from .status import budgeted_restarts

PREEMPTION_REASONS = {"PreemptionByScheduler", "PreemptionByKubeScheduler", "Preempted", "Preempting"}
INFRA_REASONS = {"Evicted", "NodeLost", "UnexpectedAdmissionError", "Shutdown", "Terminated",
                 "NodeShutdown", "DeletionByTaintManager", "EvictionByEvictionAPI",
                 "TerminationByKubelet", "DeletionByPodGC"}
SIGNAL_EXITS = {137, 143}
EXIT_RENDEZVOUS_LOST = 86  # stoker.operator.launch: the agent lost the rendezvous store
MAX_BACKOFF_S = 600


@dataclasses.dataclass(frozen=True)
class Restart:
    cause: str            # userError | infrastructure | preemption | none
    counted: bool         # spends failurePolicy.maxRestarts
    reason: str           # condition reason
    message: str
    pod: str | None = None
    exit_code: int | None = None


@dataclasses.dataclass(frozen=True)
class Fail:
    reason: str
    message: str
    pod: str | None = None
    exit_code: int | None = None


def classify(pod: PodView) -> str:
    reasons = {pod.reason, pod.disruption or ""}
    if reasons & PREEMPTION_REASONS:
        return "preemption"
    if reasons & INFRA_REASONS or pod.disruption:
        return "infrastructure"
    if pod.exit_code is None:
        return "infrastructure"
    if pod.exit_code in SIGNAL_EXITS and pod.reason != "OOMKilled":
        return "infrastructure"
    if pod.exit_code == EXIT_RENDEZVOUS_LOST:
        return "infrastructure"
    return "userError"


def _rule_action(job: JobView, exit_code: int | None) -> str | None:
    if exit_code is None:
        return None
    for rule in job.exit_code_rules:
        if exit_code in rule.exit_codes:
            return rule.action
    return None


def _describe(pod: PodView, cause: str) -> str:
    code = f"exit code {pod.exit_code}" if pod.exit_code is not None else "no exit code"
    why = f", {pod.reason}" if pod.reason else ""
    return f"worker pod {pod.name} failed ({code}{why}; cause {cause})"


def decide(job: JobView, failed: Sequence[PodView], restarts: dict[str, int]) -> Restart | Fail | None:
    """Decide on the failed pods of the current incarnation (None if there are none)."""
    if not failed:
        return None
    failed = sorted(failed, key=lambda p: (p.index, p.name))
    # FailJob anywhere wins: the user said this exit code is final.
    for pod in failed:
        if _rule_action(job, pod.exit_code) == "FailJob":
            return Fail("ExitCodeRule",
                        f"{_describe(pod, classify(pod))} and failurePolicy.exitCodeRules says FailJob",
                        pod.name, pod.exit_code)
    pod = failed[0]
    cause = classify(pod)
    action = _rule_action(job, pod.exit_code)
    # Preemption and a lost rendezvous store (the operator restarted) are not the job's fault.
    counted = cause != "preemption" and pod.exit_code != EXIT_RENDEZVOUS_LOST
    if action == "Ignore":
        counted = False
    elif action == "RestartJob":
        counted = True
    if counted and budgeted_restarts(restarts) >= job.max_restarts:
        return Fail("RestartLimitExceeded",
                    f"{_describe(pod, cause)} and the restart budget is spent: "
                    f"{budgeted_restarts(restarts)} of failurePolicy.maxRestarts={job.max_restarts} used",
                    pod.name, pod.exit_code)
    reason = {"preemption": "WorkerPreempted", "infrastructure": "WorkerLost",
              "userError": "WorkerFailed"}[cause]
    return Restart(cause, counted, reason, _describe(pod, cause), pod.name, pod.exit_code)


def backoff_seconds(job: JobView, restarts: dict[str, int]) -> float:
    """Wait before creating the next incarnation after the n-th failure restart."""
    n = max(1, int(restarts.get("total", 0)))
    if job.backoff_seconds <= 0:
        return 0.0
    return float(min(MAX_BACKOFF_S, job.backoff_seconds * 2 ** (n - 1)))
