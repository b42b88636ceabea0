"""The operator's heartbeat service: per-job token Secrets, real gRPC streams from
the worker SDK feeding the progress tracker, commands back to the workers.

The Kubernetes API is a small in-memory stand-in for the Secret calls (the
cluster tests exercise the real one)."""
from __future__ import annotations

import threading
import time

import pytest

from stoker.common import env as E
from stoker.operator import heartbeats as H
from stoker.operator.kube import KubeApi
from stoker.worker.sdk import Session

OWNER = {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "name": "j", "uid": "u1", "controller": True}


class FakeSecrets(KubeApi):
    def __init__(self):
        self.items: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []

    def request(self, method, path, body=None, ok=(200, 201, 202), **_):
        self.calls.append((method, path))
        if method == "GET":
            return (200, self.items[path]) if path in self.items else (404, {})
        if method == "POST":
            name = body["metadata"]["name"]
            full = f"{path}/{name}"
            if full in self.items:
                return 409, {}
            self.items[full] = body
            return 201, body
        raise AssertionError(method)


def eventually(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"not met within {timeout}s")


@pytest.fixture
def hb():
    kube = FakeSecrets()
    changes: list = []
    svc = H.OperatorHeartbeats(kube, "127.0.0.1:0", on_change=lambda ns, n: changes.append((ns, n)))
    svc.start()
    svc.changes = changes
    yield svc
    svc.stop()


def session(svc, token, rank=0, incarnation=0, job="j"):
    return Session(f"127.0.0.1:{svc.port}", token, namespace="ns", job_name=job, job_uid="u1", rank=rank,
                   world_size=2, incarnation=incarnation, pod_name=f"j-worker-{rank}-{incarnation}",
                   node_name=f"n{rank}", interval_s=0.1)


def test_the_token_secret_is_created_once_owned_by_the_job_and_mounted_by_reference(hb):
    token = hb.ensure_secret("ns", "j", OWNER, {"app": "x"})
    assert hb.ensure_secret("ns", "j", OWNER) == token
    sec = hb.kube.items["/api/v1/namespaces/ns/secrets/stoker-j-token"]
    assert sec["metadata"]["ownerReferences"] == [OWNER] and token not in str(sec)  # stored base64
    assert [c[0] for c in hb.kube.calls].count("POST") == 1
    # a restarted operator reads the same token back
    other = H.OperatorHeartbeats(hb.kube)
    assert other.lookup("ns", "j") == token and other.lookup("ns", "nope") is None
    assert H.token_env("j") == {"name": E.JOB_TOKEN,
                                "valueFrom": {"secretKeyRef": {"name": "stoker-j-token", "key": "token"}}}


def test_worker_heartbeats_feed_the_tracker_and_commands_reach_the_workers(hb):
    token = hb.ensure_secret("ns", "j", OWNER)
    with session(hb, token, rank=0) as s0, session(hb, token, rank=1) as s1:
        s0.step(0, step_time_seconds=0.05)
        s1.step(0)
        eventually(lambda: [r.step for r in hb.ranks("ns", "j", 0)] == [0, 0])
        s0.step(5, step_time_seconds=0.05)
        s1.step(5)
        ranks = eventually(lambda: (r := hb.ranks("ns", "j", 0)) and [x.step for x in r] == [5, 5] and r)
        assert set(ranks[0].step_times) == {0.05} and ranks[1].pod_name == "j-worker-1-0" and ranks[1].node_name == "n1"
        assert ranks[0].advanced_at <= ranks[0].last_seen
        rid = hb.request_checkpoint("ns", "j", stop=True, reason="scale-down")
        eventually(lambda: s0.stop_requested() and s1.stop_requested())
        eventually(lambda: hb.command_acks(rid) == {0: "RECEIVED", 1: "RECEIVED"})
    assert ("ns", "j") in hb.changes  # the phase change woke the reconciler


def test_a_wrong_token_is_refused_and_records_nothing(hb):
    hb.ensure_secret("ns", "j", OWNER)
    with session(hb, "not-the-token") as s:
        s.step(3)
        time.sleep(0.5)
    assert hb.ranks("ns", "j") == []


def test_forget_drops_the_jobs_state(hb):
    token = hb.ensure_secret("ns", "j", OWNER)
    with session(hb, token) as s:
        s.step(1)
        eventually(lambda: hb.ranks("ns", "j"))
    hb.forget("ns", "j")
    assert hb.ranks("ns", "j") == [] and hb.workers("ns", "j") == []


def test_with_an_install_key_tokens_are_derived_and_their_secret_is_named_for_the_key():
    """HA installs: the separate rendezvous store checks tokens with the key alone. A job's
    Secret with a random token (made before the key) is another Secret, never reused."""
    from stoker.common.auth import derive_token, key_id

    key = "k" * 40
    kube = FakeSecrets()
    old = H.OperatorHeartbeats(kube)
    random_token = old.ensure_secret("ns", "j", OWNER)
    svc = H.OperatorHeartbeats(kube, key=key)
    token = svc.ensure_secret("ns", "j", OWNER)
    assert token == derive_token(key, "ns", "j") != random_token
    assert f"/api/v1/namespaces/ns/secrets/stoker-j-token-{key_id(key)}" in kube.items
    assert svc.lookup("ns", "j") == token and svc.lookup("ns", "other") == derive_token(key, "ns", "other")
    assert H.token_env("j", svc.secret_suffix)["valueFrom"]["secretKeyRef"]["name"] == f"stoker-j-token-{key_id(key)}"
    assert H.OperatorHeartbeats(kube, key=key).ensure_secret("ns", "j", OWNER) == token   # a restarted operator


def test_the_watchdog_asks_for_a_pass_once_when_a_ranks_silence_crosses_the_frozen_threshold():
    hb = H.OperatorHeartbeats(None, on_change=lambda ns, n: None, frozen_after_s=3.0)  # type: ignore[arg-type]
    beat = dict(incarnation=0, step=5, pod_name="p", node_name="n")
    hb.tracker.observe("ns", "j", rank=0, now=100.0, **beat)
    hb.tracker.observe("ns", "j", rank=1, now=100.0, **beat)
    hb.registry.newest_seen = 102.0
    assert hb.silent_now() == []                       # 2 s: not yet
    hb.tracker.observe("ns", "j", rank=0, now=104.0, **beat)
    hb.registry.newest_seen = 104.0
    assert hb.silent_now() == [("ns", "j")]            # rank 1 silent 4 s while rank 0 beats
    assert hb.silent_now() == []                       # once per crossing
    hb.tracker.observe("ns", "j", rank=1, now=105.0, **beat)   # it speaks again...
    hb.tracker.observe("ns", "j", rank=0, now=109.0, **beat)
    hb.registry.newest_seen = 109.0
    assert hb.silent_now() == [("ns", "j")]            # ...and goes silent again: a new crossing
    hb.stop()


def test_the_watchdog_asks_for_a_pass_when_a_launcher_crosses_its_frozen_and_its_exit_allowances():
    """A quiet launcher is judged at 2x the frozen allowance, or at LAUNCHER_EXIT_S once its pod's
    trainers all finished (heartbeat_checks.frozen_launcher): a pass at each crossing, once each."""
    from stoker.common.launcher_beats import LauncherBeat

    hb = H.OperatorHeartbeats(None, on_change=lambda ns, n: None, frozen_after_s=3.0)  # type: ignore[arg-type]
    hb.registry.launchers.alive(LauncherBeat("ns", "j", "j-worker-0-0", "n", 0, 100.0))
    crossings = []
    for now in (105.0, 106.5, 107.0, 129.0, 130.5, 131.0):
        hb.registry.newest_seen = now
        crossings.append((now, hb.silent_now()))
    assert crossings == [(105.0, []), (106.5, [("ns", "j")]), (107.0, []),
                         (129.0, []), (130.5, [("ns", "j")]), (131.0, [])], crossings
    hb.stop()
