"""Incident history and last-checkpoint status fields. Pure.

``status.incidents`` (newest last, at most ``MAX_INCIDENTS``) records every
failure the operator acted on:

    time                     when it was detected (RFC 3339)
    kind                     Restart | Replace | JobFailed
    inPlace, workerRestarts  a Restart of the trainers inside their pods (same incarnation) and the
                             launchers' reports it covers (policy_inplace)
    cause                    budget class: userError | infrastructure | preemption
    detectedCause            what detection saw: NodeLost, Hang, WorkerKilled, ...
    originalCause            for detectedCause UserError: what it looked like
    rank, pod, node, exitCode, step, incarnation
    message, error           human text; the last error lines
    detectionLatencySeconds  detection time - estimated onset
    recoveredAt, timeToRecoverSeconds   filled once training advances again

``status.lastCheckpoint`` {step, uri, time, worldSize} comes from the workers'
heartbeat metrics (``last_committed_step``).
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

from stoker.common import layout
from stoker.common.timefmt import fmt_time, parse_time

from . import detection as D

MAX_INCIDENTS = 50   # crds/: status.incidents maxItems


def record(finding: D.Finding, *, kind: str, budget: str, incarnation: int, now: dt.datetime,
           message: str | None = None, original_cause: str | None = None, error: str = "") -> dict[str, Any]:
    """One incident entry for ``finding`` (detected at ``now``)."""
    inc: dict[str, Any] = {
        "time": fmt_time(now),
        "kind": kind,
        "cause": budget,
        "detectedCause": finding.cause,
        "incarnation": incarnation,
        "message": (message or finding.message)[:2000],
    }
    if original_cause and original_cause != finding.cause:
        inc["originalCause"] = original_cause
    for key, val in (("rank", finding.rank), ("pod", finding.pod), ("node", finding.node),
                     ("exitCode", finding.exit_code), ("step", finding.step)):
        if val is not None:
            inc[key] = val
    if finding.step is not None and not finding.step_exact:
        inc["stepApproximate"] = True   # a heartbeat's step: the repeat rule does not count it
    if error:
        inc["error"] = error[:1000]
    if finding.onset is not None:
        inc["detectionLatencySeconds"] = round(max(0.0, (now - finding.onset).total_seconds()), 3)
    return inc


def note(kind: str, incarnation: int, now: dt.datetime, message: str) -> dict[str, Any]:
    """An incident the operator caused itself (a restart for a changed pod template): no detected cause."""
    return {"time": fmt_time(now), "kind": kind, "cause": "none", "incarnation": incarnation, "message": message}


def append(incidents: Sequence[Mapping[str, Any]] | None, inc: Mapping[str, Any]) -> list[dict[str, Any]]:
    return ([dict(i) for i in incidents or []] + [dict(inc)])[-MAX_INCIDENTS:]


def open_incident(incidents: Sequence[Mapping[str, Any]] | None) -> int | None:
    """Index of the newest Restart/Replace incident not yet marked recovered."""
    items = list(incidents or [])
    for i in range(len(items) - 1, -1, -1):
        inc = items[i]
        if inc.get("kind") in ("Restart", "Replace") and "recoveredAt" not in inc:
            return i
        if inc.get("kind") in ("Restart", "Replace"):
            return None
    return None


def mark_recovered(incidents: Sequence[Mapping[str, Any]] | None, *, now: dt.datetime, incarnation: int,
                   training: bool) -> list[dict[str, Any]] | None:
    """Close the open incident once the job trains again; None if nothing changed.

    ``training``: a rank of ``incarnation`` reported a completed step since it
    started (the job is past rendezvous and restore). A Restart closes only in a
    later incarnation than the one that failed; a Replace or an in-place Restart in the same one.
    """
    i = open_incident(incidents)
    if i is None or not training:
        return None
    items = [dict(x) for x in incidents or []]
    inc = items[i]
    failed_in = int(inc.get("incarnation", 0))
    if inc["kind"] == "Restart" and not inc.get("inPlace") and incarnation <= failed_in:
        return None
    detected = parse_time(inc.get("time"))
    inc["recoveredAt"] = fmt_time(now)
    if detected is not None:
        inc["timeToRecoverSeconds"] = round(max(0.0, (now - detected).total_seconds()), 3)
    return items


def event_message(inc: Mapping[str, Any]) -> str:
    where = ", ".join(f"{k} {inc[k]}" for k in ("rank", "pod", "node", "step") if inc.get(k) is not None)
    lat = inc.get("detectionLatencySeconds")
    lat_part = f"; detected after {lat:g}s" if isinstance(lat, (int, float)) else ""
    return f"{inc.get('detectedCause', inc.get('cause'))}: {inc.get('message', '')}" \
           f"{' (' + where + ')' if where else ''}{lat_part}"


# ---------------------------------------------------------------------------- last checkpoint


def last_checkpoint(workers: Sequence[Any], uri: str | None, now: dt.datetime,
                    previous: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """status.lastCheckpoint from heartbeat snapshots (objects with ``metrics``
    and ``world_size``); keeps ``previous`` unless a newer step was committed.
    A committed checkpoint is global, so the highest step any rank reports wins."""
    best_step, world = None, 0
    for w in workers:
        m = getattr(w, "metrics", None) or {}
        s = m.get("last_committed_step")
        if s is None:
            continue
        s = int(s)
        if best_step is None or s > best_step:
            best_step, world = s, int(getattr(w, "world_size", 0) or 0)
    prev_step = int(previous["step"]) if previous and previous.get("step") is not None else None
    if best_step is None or (prev_step is not None and best_step <= prev_step):
        return dict(previous) if previous else None
    out: dict[str, Any] = {"step": best_step, "time": fmt_time(now)}
    if uri:
        out["uri"] = f"{uri.rstrip('/')}/{layout.step_dir(best_step)}"
    if world:
        out["worldSize"] = world
    return out


# A PeerLost incident is rewritten as NodeLost when its suspect's node is found lost this soon
# after it: the survivor's collective error comes first, and NotReady only after the control
# plane's grace period (40 s by default).
PEER_NODE_WINDOW_S = 180.0


def confirm_peer_lost(incidents: Sequence[Mapping[str, Any]] | None, nodes: Mapping[str, D.NodeView],
                      nodes_listed: bool, now: dt.datetime) -> list[dict[str, Any]] | None:
    """The newest Restart/Replace, if it is a PeerLost whose suspect's node (its ``node``) is now
    lost or gone, as NodeLost; None if nothing changes."""
    items = [dict(x) for x in incidents or []]
    i = next((k for k in range(len(items) - 1, -1, -1) if items[k].get("kind") in ("Restart", "Replace")), None)
    if i is None or items[i].get("detectedCause") != D.PEER_LOST or not items[i].get("node"):
        return None
    inc, detected = items[i], parse_time(items[i].get("time"))
    view = nodes.get(inc["node"])
    lost = view.lost if view is not None else nodes_listed
    if not lost or detected is None or (now - detected).total_seconds() > PEER_NODE_WINDOW_S:
        return None
    inc["detectedCause"] = D.NODE_LOST
    inc["message"] = f"{inc.get('message', '')}; then node {inc['node']} was lost: the root cause".lstrip("; ")
    return items
