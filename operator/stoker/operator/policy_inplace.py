"""In-place restarts, the operator's part (issue 12; the launcher's is launch_inplace). Pure.

A fixed-size job's launcher restarts its trainers inside the pod when one exits with an
error (torchrun ``--max-restarts``, spec.failurePolicy.inPlaceRestarts) and reports it at
once over the heartbeat stream (``LauncherReport``). The pods and the incarnation stay, so
the pod watch sees nothing; this step records what a restart as a new incarnation would
have: an incident (kind ``Restart``, ``inPlace: true``) whose cause is named from the
report exactly as from a failed pod (``policy_failure.decide`` on the report seen as that
pod: exit code, signal, peer errors, the repeat rule, exitCodeRules), the budget spent, or
the job failed when the budget is spent. The incident closes (time to recover) when a rank
completes a step again.

One fault, one incident: the killed trainer's launcher reports, and the other pods' trainers,
whose collective broke, may report a moment later (PeerLost, which waits for the peer's own
report as it waits for a failed peer pod). A report joins the newest in-place incident if its
trainer failed before that incident recovered (a trainer restarted after it completed a step,
supervision; the report itself may arrive after that) unless its pod is already in it: the same
pod failing again is a new failure. It joins if it failed within ``PEER_SETTLE_S`` of the
incident or its error is a broken collective's.
Each incident lists the reports it covers (``workerRestarts``:
``<pod>#<launcher restart number>``), so none is counted twice.

Falls back to a new incarnation when the in-place restart does not train again within
``Settings.in_place_deadline_s``; when a launcher's restarts are used up its pod fails and
``policy_failure`` restarts the job as before.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Mapping, Sequence

from stoker.common.timefmt import parse_time

from . import detection as D
from . import incidents as I
from . import policy_failure
from .pass_state import Pass, Plan
from .peer_errors import PEER_SETTLE_S, peer_transport_error
from .podview import PodView

IN_PLACE_TIMEOUT = "InPlaceRestartTimedOut"


def as_pod(report: Any, index: int) -> PodView:
    """The report as the failed pod a pod-level restart would have seen."""
    return PodView(name=report.pod_name, index=index, incarnation=report.incarnation, phase="Failed",
                   node=report.node_name or None, exit_code=report.exit_code, message=report.error,
                   finished_at=dt.datetime.fromtimestamp(report.failed_at, dt.timezone.utc),
                   last_step=report.step if report.step >= 0 else None)


def covered(incidents: Sequence[Mapping[str, Any]] | None) -> set[str]:
    return {k for i in incidents or [] for k in i.get("workerRestarts") or []}


def open_in_place(incidents: Sequence[Mapping[str, Any]] | None, incarnation: int) -> int | None:
    """Index of the newest acting incident if it is an open in-place restart of ``incarnation``."""
    i = I.open_incident(incidents)
    if i is None:
        return None
    inc = list(incidents or [])[i]
    return i if inc.get("inPlace") and int(inc.get("incarnation", -1)) == incarnation else None


def joinable(incidents: Sequence[Mapping[str, Any]] | None, incarnation: int) -> int | None:
    """Index of the newest acting incident if it is an in-place restart of ``incarnation``, open or
    recovered: a report of a failure that came before it recovered still belongs to it."""
    items = list(incidents or [])
    for i in range(len(items) - 1, -1, -1):
        if items[i].get("kind") in ("Restart", "Replace"):
            inc = items[i]
            return i if inc.get("inPlace") and int(inc.get("incarnation", -1)) == incarnation else None
    return None


def sort_reports(reports: Sequence[Any], incarnation: int, incidents: Sequence[Mapping[str, Any]] | None,
                 pods: Sequence[PodView]) -> tuple[list[Any], list[Any]]:
    """(reports that join the newest in-place incident, reports of a new failure): the reports of
    ``incarnation`` from its running pods that no incident covers yet."""
    done = covered(incidents)
    running = {(p.name, p.node) for p in pods if p.incarnation == incarnation and p.phase == "Running"
               and not p.deleting}
    new = [r for r in reports if r.incarnation == incarnation and r.key not in done
           and (r.pod_name, r.node_name or None) in running]
    i = joinable(incidents, incarnation)
    if i is None:
        return [], new
    inc = list(incidents or [])[i]
    pods_in = {k.rsplit("#", 1)[0] for k in inc.get("workerRestarts") or []}
    detected, recovered = parse_time(inc.get("time")), parse_time(inc.get("recoveredAt"))

    def joins(r: Any) -> bool:
        """Not its pod again; failed before the job trained again (the report may come later: it is
        sent while the launcher restarts, and a fast recovery can close the incident first); and
        failed within PEER_SETTLE_S of the incident or with a broken collective's error."""
        failed = min(r.failed_at, r.seen_at)
        if r.pod_name in pods_in or detected is None or (recovered is not None and failed > recovered.timestamp()):
            return False
        return failed <= detected.timestamp() + PEER_SETTLE_S or peer_transport_error(r.error)
    joining = [r for r in new if joins(r)]
    return joining, [r for r in new if r not in joining]


def joined(incidents: Sequence[Mapping[str, Any]], incarnation: int, reports: Sequence[Any]) -> list[dict[str, Any]]:
    """The incidents with ``reports`` added to the newest in-place incident."""
    items = [dict(x) for x in incidents]
    i = joinable(items, incarnation)
    assert i is not None
    items[i]["workerRestarts"] = [*items[i].get("workerRestarts", []), *(r.key for r in reports)]
    return items


def overdue(incidents: Sequence[Mapping[str, Any]] | None, incarnation: int, now: dt.datetime,
            deadline_s: float) -> tuple[D.Finding | None, float | None]:
    """(the finding that ends an in-place restart that did not train again within ``deadline_s``,
    else None; seconds until that deadline, None when nothing is waiting)."""
    i = open_in_place(incidents, incarnation)
    if i is None:
        return None, None
    inc = list(incidents or [])[i]
    since = parse_time(inc.get("time"))
    if since is None:
        return None, None
    left = deadline_s - (now - since).total_seconds()
    if left > 0:
        return None, left
    f = D.Finding(IN_PLACE_TIMEOUT, f"the in-place restart after {inc.get('detectedCause')} did not train again "
                  f"within {deadline_s:g}s: restarting the job as a new incarnation",
                  pod=inc.get("pod"), node=inc.get("node"), rank=inc.get("rank"))
    return f, None


def restarted(ps: Pass) -> Plan | None:
    """The reconcile step: record in-place restarts, fail the job on a spent budget, fall back to a
    new incarnation past the deadline (carried out by ``policy_failure.restart``)."""
    if ps.decision is not None or ps.phase in ("Succeeded", "Failed"):
        return None
    incidents = ps.st.get("incidents") or []
    joins, fresh = sort_reports(ps.obs.reports, ps.incarnation, incidents, ps.obs.facts)
    if joins:
        ps.st["incidents"] = incidents = joined(incidents, ps.incarnation, joins)
    if fresh:
        return _record(ps, fresh)
    f, left = overdue(incidents, ps.incarnation, ps.now, ps.settings.in_place_deadline_s)
    if f is not None:
        inc = I.record(f, kind="Restart", budget="none", incarnation=ps.incarnation, now=ps.now)
        ps.decision = policy_failure.Decision("restart", IN_PLACE_TIMEOUT, f.message, "none", False, ("total",),
                                              f, inc)
    ps.p.requeue(left)
    return None


def _record(ps: Pass, fresh: Sequence[Any]) -> Plan | None:
    """A new failure seen in reports only: decided as if its pods had failed, carried out in place."""
    pods = tuple(as_pod(r, i) for i, r in enumerate(fresh))
    sv = policy_failure.decide(
        obs=dataclasses.replace(ps.obs, facts=pods), incarnation=ps.incarnation, desired=len(pods),
        restarts=ps.restarts, incidents=ps.st.get("incidents"), policy=ps.settings.policy(ps.job),
        rules=ps.job.exit_code_rules, t=ps.settings.timeouts(ps.job), now=ps.now)
    if sv is None:
        return None
    if sv.finding.settle_s > 0:  # PeerLost: the peer's own report may still come
        ps.p.requeue(sv.finding.settle_s)
        return None
    if sv.action != "restart":   # fail / pause: as for a failed pod
        ps.decision = sv
        return policy_failure.failure(ps, decided=sv)
    inc = dict(sv.incident, inPlace=True, workerRestarts=[r.key for r in fresh],
               message=sv.incident["message"].replace("worker pod ", "the trainer in worker pod ", 1))
    root = next((r for r in fresh if r.pod_name == inc.get("pod")), None)
    if root is not None:   # the launcher knows the failed rank exactly; the heartbeats may be older
        inc["rank"] = root.rank
    ps.st["restarts"] = policy_failure.bump(ps.restarts, sv.increment)
    ps.record(inc)
    ps.p.restart_cause = sv.budget
    ps.event("Warning", sv.reason, f"{I.event_message(inc)}; its workers restart in place "
             f"(incarnation {ps.incarnation} and its pods kept)")
    return None
