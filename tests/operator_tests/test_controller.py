"""The reconcile shell against a fake API: one status write per pass, Events only
after it succeeded, optimistic-concurrency retries, idempotent creates."""
from __future__ import annotations

import copy

import pytest

from stoker.operator.controller import Controller
from stoker.operator.kube import Conflict, KubeError
from stoker.operator.pods import RenderConfig

from .helpers import NOW, job_body


class FakeKube:
    def __init__(self, job):
        self.job = job
        self.pods: dict[str, dict] = {}
        self.calls: list[str] = []
        self.conflicts = 0
        self.fail_status_write = False

    def get_job(self, ns, name):
        self.calls.append("get")
        return copy.deepcopy(self.job) if self.job else None

    def list_pods(self, ns, name):
        self.calls.append("list")
        return list(copy.deepcopy(self.pods).values())

    def create_pod(self, ns, pod):
        self.calls.append(f"create {pod['metadata']['name']}")
        if pod["metadata"]["name"] in self.pods:
            return False
        pod["status"] = {"phase": "Pending"}
        self.pods[pod["metadata"]["name"]] = pod
        return True

    def delete_pod(self, ns, name, grace_s=None):
        self.calls.append(f"delete {name}")
        return self.pods.pop(name, None) is not None

    def patch_job_status(self, ns, name, rv, patch):
        self.calls.append("status")
        if self.conflicts:
            self.conflicts -= 1
            self.job["metadata"]["resourceVersion"] = str(int(self.job["metadata"]["resourceVersion"]) + 1)
            raise Conflict(409, "changed")
        if self.fail_status_write:
            raise KubeError(500, "boom")
        assert rv == self.job["metadata"]["resourceVersion"]
        st = self.job.setdefault("status", {})
        for k, v in patch.items():
            if v is None:
                st.pop(k, None)
            else:
                st[k] = v
        self.job["metadata"]["resourceVersion"] = str(int(rv) + 1)
        return copy.deepcopy(self.job)

    def emit_event(self, job, type_, reason, message):
        self.calls.append(f"event {reason}")

    def delete_job(self, ns, name, uid):
        self.calls.append("delete-job")


def ctl(kube):
    return Controller(kube, RenderConfig(), clock=lambda: NOW)


def test_first_pass_creates_pods_then_writes_status_once_then_events():
    kube = FakeKube(job_body())
    ctl(kube).trigger("ns", "demo")
    assert kube.calls == ["get", "list", "create demo-worker-0-0", "create demo-worker-1-0", "status",
                          "event JobCreated"]
    assert kube.job["status"]["phase"] == "Created"


def test_a_second_pass_with_nothing_new_writes_nothing():
    kube = FakeKube(job_body())
    c = ctl(kube)
    c.trigger("ns", "demo")
    kube.calls.clear()
    c.trigger("ns", "demo")
    assert kube.calls == ["get", "list"]


def test_no_events_when_the_status_write_fails():
    kube = FakeKube(job_body())
    kube.fail_status_write = True
    with pytest.raises(KubeError):
        ctl(kube).trigger("ns", "demo")
    assert not [c for c in kube.calls if c.startswith("event")]


def test_a_conflict_rereads_the_job_and_redoes_the_pass_without_duplicates():
    kube = FakeKube(job_body())
    kube.conflicts = 1
    ctl(kube).trigger("ns", "demo")
    assert kube.calls.count("status") == 2 and kube.calls.count("get") == 2
    assert sorted(kube.pods) == ["demo-worker-0-0", "demo-worker-1-0"]
    assert kube.calls.count("event JobCreated") == 1


def test_a_vanished_job_is_a_no_op():
    kube = FakeKube(None)
    assert ctl(kube).trigger("ns", "demo") is None
    assert kube.calls == ["get"]


def test_own_status_write_is_recognised():
    kube = FakeKube(job_body())
    c = ctl(kube)
    c.trigger("ns", "demo")
    assert c.is_own_write("ns", "demo", kube.job["metadata"]["resourceVersion"])
    assert not c.is_own_write("ns", "demo", "999")


def test_a_restart_decision_schedules_the_next_step_without_waiting_for_the_resync():
    import time

    body = job_body(status={"phase": "Running", "incarnation": 0, "conditions": [
        {"type": "Created", "status": "True", "reason": "JobCreated", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
    kube = FakeKube(body)
    c = Controller(kube, RenderConfig(), clock=lambda: NOW, requeue_horizon_s=5)
    c.trigger("ns", "demo")  # creates incarnation 0
    for pod in kube.pods.values():
        pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 1}}}]}
    c.trigger("ns", "demo")  # decides the restart (status only) and requeues itself
    assert kube.job["status"]["incarnation"] == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sorted(kube.pods) != ["demo-worker-0-1", "demo-worker-1-1"]:
        time.sleep(0.05)
    assert sorted(kube.pods) == ["demo-worker-0-1", "demo-worker-1-1"]
