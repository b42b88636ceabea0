"""The recovery shell's side effects, against a recording stand-in for the API."""
from __future__ import annotations

from stoker.common import env as E
from stoker.common import labels as L
from stoker.operator import recovery as R
from stoker.operator.kube import KubeError
from stoker.operator.recovery_shell import RecoveryShell

JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "u1"}}


class Api:
    def __init__(self, nodes=None, forbid_nodes=False):
        self.calls: list[tuple] = []
        self.events: list[tuple] = []
        self.nodes = nodes or []
        self.forbid_nodes = forbid_nodes

    def request(self, method, path, body=None, **kw):
        self.calls.append((method, path, body))
        if path == "/api/v1/nodes":
            if self.forbid_nodes:
                raise KubeError(403, "forbidden")
            return 200, {"items": self.nodes}
        return 200, {}

    def emit_event(self, job, type_, reason, message):
        self.events.append((type_, reason, message))


def incident(node="n1", cause="NodeLost"):
    return {"kind": "Restart", "detectedCause": cause, "node": node, "detectionLatencySeconds": 3.0}


def test_a_node_failing_jobs_is_reported_then_cordoned_by_policy():
    api = Api()
    shell = RecoveryShell(api, node_health=R.NodeHealth(report_after=2, cordon_after=3))
    shell.after_write(JOB, incident())
    assert api.events == [] and not [c for c in api.calls if c[0] == "PATCH"]
    shell.after_write(JOB, incident())
    assert [e[1] for e in api.events] == ["NodeFailingJobs"]
    shell.after_write(JOB, incident())
    assert ("PATCH", "/api/v1/nodes/n1", {"spec": {"unschedulable": True}}) in api.calls
    assert [e[1] for e in api.events] == ["NodeFailingJobs", "NodeCordoned"]


def test_user_errors_are_not_held_against_the_node():
    api = Api()
    shell = RecoveryShell(api, node_health=R.NodeHealth(report_after=1, cordon_after=1))
    shell.after_write(JOB, incident(cause="WorkerCrashed"))
    assert api.events == [] and api.calls == []


def test_nodes_are_listed_unless_rbac_forbids_it():
    api = Api(nodes=[{"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}])
    views, listed = RecoveryShell(api).nodes()
    assert listed and views["n1"].lost
    views, listed = RecoveryShell(Api(forbid_nodes=True)).nodes()
    assert (views, listed) == ({}, False)
    assert RecoveryShell(Api(), watch_nodes=False).nodes() == ({}, False)


def test_new_pods_get_the_token_by_reference_and_avoid_failed_nodes():
    class Beats:
        def ensure_secret(self, *a):
            return "t"

    shell = RecoveryShell(Api(), Beats(), heartbeat_interval_s=1)  # type: ignore[arg-type]
    pod = {"spec": {"containers": [{"name": "trainer", "env": [{"name": E.JOB_TOKEN, "value": "leak"}]}]}}
    out = shell.prepare_pod(pod, "j", ("n1",))
    env = {e["name"]: e for e in out["spec"]["containers"][0]["env"]}
    assert env[E.JOB_TOKEN] == {"name": E.JOB_TOKEN, "valueFrom": {"secretKeyRef": {"name": "stoker-j-token",
                                                                                     "key": "token"}}}
    assert env[E.HEARTBEAT_INTERVAL]["value"] == "1"
    terms = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["n1"]


def test_on_call_requests_are_acknowledged_on_the_job():
    api = Api()
    RecoveryShell(api).on_call(JOB, "rid-1", {L.CHECKPOINT_REQUEST_HANDLED: "rid-1"})
    # no heartbeat service: the request cannot reach the workers, which is said in an Event
    assert [e[1] for e in api.events] == ["CheckpointRequestIgnored"]
    [(method, path, body)] = api.calls
    assert method == "PATCH" and path.endswith("/namespaces/ns/trainingjobs/j")
    assert body == {"metadata": {"annotations": {L.CHECKPOINT_REQUEST_HANDLED: "rid-1"}}}
