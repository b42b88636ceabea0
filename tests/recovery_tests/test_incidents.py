"""Incident entries, recovery times and status.lastCheckpoint."""
from __future__ import annotations

import dataclasses
import datetime as dt

from stoker.operator import detection as D
from stoker.operator import incidents as I

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def test_record_has_cause_rank_node_and_detection_latency():
    f = D.Finding(D.HANG, "step stuck", pod="j-worker-1-0", rank=1, node="n2", step=40,
                  onset=NOW - dt.timedelta(seconds=12.5))
    inc = I.record(f, kind="Restart", budget="infrastructure", incarnation=2, now=NOW, error="x")
    assert inc == {"time": "2026-01-01T12:00:00Z", "kind": "Restart", "cause": "infrastructure",
                   "detectedCause": "Hang", "incarnation": 2, "message": "step stuck", "rank": 1,
                   "pod": "j-worker-1-0", "node": "n2", "step": 40, "error": "x",
                   "detectionLatencySeconds": 12.5}
    assert "Hang" in I.event_message(inc) and "rank 1" in I.event_message(inc) and "12.5s" in I.event_message(inc)


def test_record_keeps_what_a_repeated_failure_first_looked_like():
    f = D.Finding(D.USER_ERROR, "again", step=3)
    inc = I.record(f, kind="Restart", budget="userError", incarnation=0, now=NOW, original_cause=D.WORKER_CRASHED)
    assert inc["originalCause"] == D.WORKER_CRASHED and "detectionLatencySeconds" not in inc


def test_history_is_bounded_to_the_crd_limit():
    items: list = []
    for i in range(I.MAX_INCIDENTS + 5):
        items = I.append(items, {"kind": "Restart", "n": i})
    assert len(items) == I.MAX_INCIDENTS and items[-1]["n"] == I.MAX_INCIDENTS + 4


def test_a_restart_is_recovered_only_when_a_later_incarnation_trains():
    hist = [{"kind": "Restart", "time": "2026-01-01T11:59:30Z", "incarnation": 0}]
    assert I.mark_recovered(hist, now=NOW, incarnation=0, training=True) is None
    assert I.mark_recovered(hist, now=NOW, incarnation=1, training=False) is None
    out = I.mark_recovered(hist, now=NOW, incarnation=1, training=True)
    assert out[-1]["recoveredAt"] == "2026-01-01T12:00:00Z" and out[-1]["timeToRecoverSeconds"] == 30
    assert "recoveredAt" not in hist[0]  # input untouched
    assert I.mark_recovered(out, now=NOW, incarnation=2, training=True) is None  # closed once


def test_a_replace_recovers_in_the_same_incarnation_and_failures_are_never_open():
    assert I.mark_recovered([{"kind": "Replace", "time": "2026-01-01T11:59:50Z", "incarnation": 0}],
                            now=NOW, incarnation=0, training=True)[-1]["timeToRecoverSeconds"] == 10
    assert I.open_incident([{"kind": "JobFailed", "time": "x"}]) is None


@dataclasses.dataclass
class W:
    metrics: dict
    world_size: int = 2


def test_last_checkpoint_comes_from_the_newest_committed_step_any_rank_reports():
    ws = [W({"last_committed_step": 20}), W({"last_committed_step": 30}, world_size=3), W({})]
    lc = I.last_checkpoint(ws, "s3://b/run", NOW)
    assert lc == {"step": 30, "time": "2026-01-01T12:00:00Z", "uri": "s3://b/run/step-00000030", "worldSize": 3}
    # nothing newer: the previous record stays (with its own time)
    prev = {"step": 30, "time": "2026-01-01T11:00:00Z", "uri": "u", "worldSize": 3}
    assert I.last_checkpoint(ws, "s3://b/run", NOW, prev) == prev
    assert I.last_checkpoint([W({})], "s3://b", NOW) is None


def _peer_lost(seconds_ago: float, node: str | None = "n2", kind: str = "Restart") -> dict:
    f = D.Finding(D.PEER_LOST, "rank 0 failed in a collective: gloo/transport/tcp; suspect: j-worker-1-0 on node n2",
                  pod="j-worker-0-0", rank=0, node=node)
    return I.record(f, kind=kind, budget="infrastructure", incarnation=1,
                    now=NOW - dt.timedelta(seconds=seconds_ago))


LOST = {"n2": D.NodeView("n2", ready="Unknown", unreachable=True)}
READY = {"n2": D.NodeView("n2")}


def test_a_peer_lost_whose_suspects_node_is_then_lost_becomes_node_lost():
    """A stopped node's survivor fails first (PeerLost naming that node); NotReady comes after
    the control plane's grace period, and the incident then says what happened."""
    hist = [_peer_lost(12)]
    out = I.confirm_peer_lost(hist, LOST, True, NOW)
    assert out is not None and out[-1]["detectedCause"] == D.NODE_LOST
    assert out[-1]["message"].endswith("then node n2 was lost: the root cause")
    assert hist[-1]["detectedCause"] == D.PEER_LOST                 # the input is not changed
    gone = I.confirm_peer_lost(hist, {}, True, NOW)                  # the node object deleted
    assert gone is not None and gone[-1]["detectedCause"] == D.NODE_LOST
    replace = I.confirm_peer_lost([_peer_lost(12, kind="Replace")], LOST, True, NOW)
    assert replace is not None and replace[-1]["detectedCause"] == D.NODE_LOST
    assert I.confirm_peer_lost(out, LOST, True, NOW) is None        # once


def test_a_peer_lost_stays_when_the_node_is_ready_unknown_or_the_news_too_late():
    assert I.confirm_peer_lost([_peer_lost(12)], READY, True, NOW) is None
    assert I.confirm_peer_lost([_peer_lost(12)], {}, False, NOW) is None        # nodes not listed: unknown
    assert I.confirm_peer_lost([_peer_lost(I.PEER_NODE_WINDOW_S + 1)], LOST, True, NOW) is None
    assert I.confirm_peer_lost([_peer_lost(12, node=None)], LOST, True, NOW) is None
    # Only the newest failure: a later one (here a crash) is what the job acts on now.
    later = I.record(D.Finding(D.WORKER_CRASHED, "exit 1", node="n1"), kind="Restart", budget="userError",
                     incarnation=2, now=NOW)
    assert I.confirm_peer_lost([_peer_lost(12), later], LOST, True, NOW) is None
    assert I.confirm_peer_lost([], LOST, True, NOW) is None
