"""Which operator replica acts (kopf's peering rule), read from the peering object's status."""
from __future__ import annotations

import datetime as dt

from stoker.operator.active_replica import ActiveLabel, is_active

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.timezone.utc)


def peer(priority: int, seen_s_ago: float, lifetime: int = 60) -> dict:
    seen = NOW - dt.timedelta(seconds=seen_s_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_the_highest_live_priority_acts_and_a_dead_peer_does_not_count():
    peers = {"a": peer(200, 5), "b": peer(100, 5)}
    assert is_active(peers, 200, NOW) and not is_active(peers, 100, NOW)
    peers["a"] = peer(200, 61)                                # its keep-alives stopped a lifetime ago
    assert is_active(peers, 100, NOW)


def test_no_replica_acts_on_a_tie_or_before_its_own_keepalive_is_seen():
    assert not is_active({"a": peer(7, 1), "b": peer(7, 1)}, 7, NOW)     # kopf pauses both
    assert not is_active({"a": peer(100, 1)}, 200, NOW)                   # not in the object yet
    assert not is_active({}, 1, NOW)


class FakeKube:
    def __init__(self, status: dict) -> None:
        self.status, self.labels = status, []

    def get_peering(self, name, namespace):
        return {"status": self.status}

    def label_pod(self, namespace, name, labels):
        self.labels.append((namespace, name, labels))


def test_the_pod_label_changes_only_when_the_answer_does_and_is_handed_back_on_stop():
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    kube = FakeKube({"me": {"priority": 5, "lifetime": 60, "lastseen": now}})
    al = ActiveLabel(kube, peering="stoker", peering_namespace="ns", priority=5, pod="op-0", pod_namespace="sys")
    al.check()
    al.check()
    kube.status["other"] = {"priority": 9, "lifetime": 60, "lastseen": now}
    al.check()
    al.stop()                                                   # already false: nothing to hand back
    assert kube.labels == [("sys", "op-0", {"stoker.dev/operator-active": "true"}),
                           ("sys", "op-0", {"stoker.dev/operator-active": "false"})]
