"""The watch cache: a pass reads jobs and pods from memory only when memory cannot be behind
(primed by a direct read, none of this operator's own writes still on their way back)."""
from __future__ import annotations

from stoker.common import labels as L
from stoker.operator.controller import Controller
from stoker.operator.pods import RenderConfig
from stoker.operator.watch_cache import WatchCache

from .helpers import NOW, job_body
from .test_controller import FakeKube


def pod(name: str, rv: int, phase: str = "Running", job: str = "demo", deleting: bool = False) -> dict:
    meta = {"name": name, "namespace": "ns", "resourceVersion": str(rv),
            "labels": {L.JOB_NAME: job, L.APP_MANAGED_BY: L.MANAGED_BY_VALUE, L.REPLICA_INDEX: "0",
                       L.INCARNATION: "0"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": "n1", "containers": [{"name": "trainer"}]},
            "status": {"phase": phase}}


def test_pods_are_unknown_until_listed_directly_once():
    c = WatchCache()
    c.pod_event(None, pod("a", 5))
    assert c.pods("ns", "demo") is None
    c.prime_pods("ns", "demo", [pod("a", 5)], "5")
    assert [v.name for v in c.pods("ns", "demo")] == ["a"]


def test_events_after_priming_update_the_pods():
    c = WatchCache()
    c.prime_pods("ns", "demo", [pod("a", 5, "Pending")], "5")
    c.pod_event("MODIFIED", pod("a", 7, "Running"))
    c.pod_event("ADDED", pod("b", 8))
    assert {v.name: v.phase for v in c.pods("ns", "demo")} == {"a": "Running", "b": "Running"}
    c.pod_event("DELETED", pod("b", 9))
    assert [v.name for v in c.pods("ns", "demo")] == ["a"]


def test_an_older_version_never_replaces_a_newer_one():
    c = WatchCache()
    c.prime_pods("ns", "demo", [], "1")
    c.pod_event("MODIFIED", pod("a", 9, "Running"))
    c.pod_event("MODIFIED", pod("a", 7, "Pending"))
    c.prime_pods("ns", "demo", [pod("a", 8, "Pending")], "8")   # a list taken before the event
    assert [v.phase for v in c.pods("ns", "demo")] == ["Running"]


def test_a_list_drops_pods_memory_saw_only_before_it():
    c = WatchCache()
    c.prime_pods("ns", "demo", [pod("gone", 3), pod("new", 12)], "12")
    c.pod_event("ADDED", pod("later", 15))
    c.prime_pods("ns", "demo", [pod("new", 12)], "14")   # "gone" was deleted, its DELETED event missed
    assert sorted(v.name for v in c.pods("ns", "demo")) == ["later", "new"]


def test_own_creates_and_deletes_force_a_list_until_the_watch_shows_them():
    c = WatchCache()
    c.prime_pods("ns", "demo", [pod("a", 5)], "5")
    c.created_pod("ns", "demo", "b")
    assert c.pods("ns", "demo") is None
    c.pod_event("ADDED", pod("b", 6, "Pending"))
    assert sorted(v.name for v in c.pods("ns", "demo")) == ["a", "b"]
    c.deleted_pod("ns", "demo", "a")
    assert c.pods("ns", "demo") is None
    c.pod_event("MODIFIED", pod("a", 7, deleting=True))
    assert c.pods("ns", "demo") is not None


def test_the_job_as_written_by_us_is_not_replaced_by_the_older_event():
    c = WatchCache()
    new, old = job_body(status={"phase": "Running"}), job_body(status={"phase": "Created"})
    new["metadata"]["resourceVersion"], old["metadata"]["resourceVersion"] = "10", "9"
    c.wrote_job(new)
    c.job_event("MODIFIED", old)
    assert c.job("ns", "demo")["status"]["phase"] == "Running"
    c.job_event("DELETED", new)
    assert c.job("ns", "demo") is None



def full_job() -> dict:
    """A job as a watch delivers it: every kind of metadata a pass may read, and managedFields."""
    body = job_body(status={"phase": "Running", "restarts": 1, "conditions": [{"type": "Ready", "status": "True"}]},
                    scheduling={"queueName": "q"}, health={"action": "Pause"})
    body["metadata"].update(
        labels={"team": "a"}, annotations={"stoker.dev/restart-request": "r1", "other": "x"},
        finalizers=["f"], ownerReferences=[{"uid": "o"}], creationTimestamp="2026-01-01T00:00:00Z",
        deletionTimestamp="2026-01-01T00:01:00Z", deletionGracePeriodSeconds=30,
        managedFields=[{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}])
    return body


def test_the_cache_keeps_every_field_of_a_job_but_its_managed_fields():
    c = WatchCache()
    body = full_job()
    c.job_event("ADDED", body)
    want = {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "managedFields"}}
    assert c.job("ns", "demo") == want
    c.prime_job("ns", "demo", {**body, "metadata": {**body["metadata"], "resourceVersion": "2"}})
    assert c.job("ns", "demo") == {**want, "metadata": {**want["metadata"], "resourceVersion": "2"}}
    assert body["metadata"]["managedFields"]   # the watch's own object is left as it was


class ListingKube(FakeKube):
    def list_pods_at(self, ns, name):
        return self.list_pods(ns, name), str(int(self.job["metadata"]["resourceVersion"]) + 100)


def test_a_pass_after_the_watch_caught_up_reads_nothing_from_the_api_server():
    kube = ListingKube(job_body())
    cache = WatchCache()
    c = Controller(kube, RenderConfig(), clock=lambda: NOW, cache=cache)
    c.trigger("ns", "demo")                    # first pass: GET + LIST, creates the pods, writes status
    assert kube.calls[:2] == ["get", "list"] and kube.calls.count("status") == 1
    for i, p in enumerate(kube.pods.values()):   # the watch shows the created pods
        cache.pod_event("ADDED", {**p, "metadata": {**p["metadata"], "resourceVersion": str(200 + i)}})
    kube.calls.clear()
    c.trigger("ns", "demo")
    assert "get" not in kube.calls and "list" not in kube.calls
    c.trigger("ns", "demo", fresh=True)        # the resync's pass reads the API server
    assert kube.calls[-2:] == ["get", "list"]



def counting(c: Controller) -> list[bool]:
    """The ``fresh`` flag of every pass ``c`` runs, in order."""
    passes: list[bool] = []
    run = c.reconcile_once

    def once(ns: str, name: str, fresh: bool = False):
        try:
            return run(ns, name, fresh)
        finally:
            passes.append(fresh)

    c.reconcile_once = once
    return passes


def resync_and_wait(c: Controller, passes: list[bool]) -> bool:
    """One resync (its pass runs on the pool); the ``fresh`` flag of that pass."""
    import time

    n = len(passes)
    c.resync("ns", "demo")
    deadline = time.monotonic() + 5
    while len(passes) == n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(passes) == n + 1
    return passes[-1]


def test_a_resync_reads_the_api_server_only_when_the_last_direct_read_is_older_than_resync_fresh():
    now = [1000.0]
    kube = ListingKube(job_body())
    cache = WatchCache(mono=lambda: now[0])
    c = Controller(kube, RenderConfig(), clock=lambda: NOW, cache=cache, resync_fresh_s=60)
    passes = counting(c)
    c.trigger("ns", "demo")                    # the first pass lists the pods directly (at 1000)
    for i, p in enumerate(kube.pods.values()):
        cache.pod_event("ADDED", {**p, "metadata": {**p["metadata"], "resourceVersion": str(200 + i)}})
    kube.calls.clear()
    now[0] += 59
    assert resync_and_wait(c, passes) is False
    assert "get" not in kube.calls and "list" not in kube.calls   # a pass from memory
    now[0] += 2                                # 61 s after the direct read
    assert resync_and_wait(c, passes) is True
    assert kube.calls[:2] == ["get", "list"]
    kube.calls.clear()
    assert resync_and_wait(c, passes) is False  # that read counts as the last one
    assert "get" not in kube.calls and "list" not in kube.calls


def test_with_resync_fresh_zero_every_resync_reads_the_api_server():
    kube = ListingKube(job_body())
    c = Controller(kube, RenderConfig(), clock=lambda: NOW, cache=WatchCache(), resync_fresh_s=0)
    passes = counting(c)
    c.trigger("ns", "demo")
    kube.calls.clear()
    assert [resync_and_wait(c, passes), resync_and_wait(c, passes)] == [True, True]
    assert kube.calls.count("get") == 2 and kube.calls.count("list") == 2
