"""The recovery shell's side effects, against a recording stand-in for the API."""
from __future__ import annotations

import dataclasses
import datetime as dt

from stoker.common import env as E
from stoker.common import labels as L
from stoker.operator import detection as D
from stoker.operator import recovery as R
from stoker.operator import supervision as S
from stoker.operator import policy_failure as F
from stoker.operator.kube import KubeApi, KubeError
from stoker.operator.podview import pod_view
from stoker.operator.recovery_shell import RecoveryShell

JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "u1"}}


class Api(KubeApi):
    """Records every request the typed calls make."""

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
        if path.startswith("/api/v1/nodes/") and method == "GET":
            name = path.rsplit("/", 1)[1]
            node = next((n for n in self.nodes if n["metadata"]["name"] == name), None)
            return (200, node) if node else (404, {})
        return 200, {}

    def emit_event(self, job, type_, reason, message):
        self.events.append((type_, reason, message))


def pod_views(*pods):
    return [v for v in (pod_view(p) for p in pods) if v is not None]


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


def ready_node(name, ready="True", taints=()):
    return {"metadata": {"name": name}, "spec": {"taints": [{"key": k, "effect": "NoSchedule"} for k in taints]},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def test_a_node_the_cached_list_lacks_or_shows_lost_is_read_again_before_anything_is_concluded():
    """Found in CI (test_e2e_elastic): a replacement was scheduled on a node that had joined
    0.3 s before; the pass judged it on a node list taken a moment earlier (the node absent,
    or still tainted not-ready) and replaced the pod again as NodeLost. A suspect node is
    read again (a GET) on every pass; the list's cache is kept for the others."""
    clock = [0.0]
    api = Api(nodes=[ready_node("n1")])
    shell = RecoveryShell(api, mono=lambda: clock[0])
    views, _ = shell.nodes(need={"n1"})
    assert not views["n1"].lost
    api.nodes += [ready_node("fresh", ready="False", taints=[D.NOT_READY_TAINT])]
    shell.nodes()                                          # cached: the list now holds 'fresh' not ready
    api.calls.clear()
    clock[0] = 0.05
    api.nodes[1] = ready_node("fresh")                     # Ready, taint lifted; the pod lands there
    views, listed = shell.nodes(need={"n1", "fresh"})
    assert listed and not views["fresh"].lost and not views["n1"].lost
    assert [c[1] for c in api.calls] == ["/api/v1/nodes/fresh"]     # only the suspect, the list still cached
    api.nodes.append(ready_node("newer"))                  # not in the cached list at all
    api.calls.clear()
    views, _ = shell.nodes(need={"newer"})
    assert "newer" in views and not views["newer"].lost
    api.nodes = [n for n in api.nodes if n["metadata"]["name"] != "newer"]
    views, _ = shell.nodes(need={"newer"})
    assert "newer" not in views                            # really gone: the GET says 404
    # observe() asks for the nodes of the job's pods
    api.nodes.append(ready_node("n4"))
    pod = {"metadata": {"name": "j-worker-0-0", "labels": {L.REPLICA_INDEX: "0", L.INCARNATION: "0"}},
           "spec": {"containers": [{"name": "trainer"}], "nodeName": "n4"}, "status": {"phase": "Running"}}
    obs = shell.observe("ns", "j", pod_views(pod))
    assert "n4" in obs.nodes and not obs.nodes["n4"].lost


def test_new_pods_get_the_token_by_reference_and_avoid_failed_nodes():
    class Beats:
        secret_suffix = ""      # no install key: the job's Secret holds a random token

        def ensure_secret(self, *a):
            return "t"

    shell = RecoveryShell(Api(), Beats(), heartbeat_interval_s=1)  # type: ignore[arg-type]
    pod = {"spec": {"containers": [{"name": "trainer", "env": [{"name": E.JOB_TOKEN, "value": "leak"}]}]}}
    out = shell.prepare_pod(pod, "j", ("n1",))
    env = {e["name"]: e for e in out["spec"]["containers"][0]["env"]}
    assert env[E.JOB_TOKEN] == {"name": E.JOB_TOKEN, "valueFrom": {"secretKeyRef": {"name": "stoker-j-token",
                                                                                     "key": "token"}}}
    assert env[E.HEARTBEAT_INTERVAL]["value"] == "1"
    [term] = out["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["preference"]["matchFields"][0]["values"] == ["n1"]


def test_on_call_requests_are_acknowledged_on_the_job():
    api = Api()
    RecoveryShell(api).on_call(JOB, "rid-1", {L.CHECKPOINT_REQUEST_HANDLED: "rid-1"})
    # no heartbeat service: the request cannot reach the workers, which is said in an Event
    assert [e[1] for e in api.events] == ["CheckpointRequestIgnored"]
    [(method, path, body)] = api.calls
    assert method == "PATCH" and path.endswith("/namespaces/ns/trainingjobs/j")
    assert body == {"metadata": {"annotations": {L.CHECKPOINT_REQUEST_HANDLED: "rid-1"}}}


def test_a_replacement_waiting_for_capacity_is_not_blamed_for_the_lost_pods_silence():
    # The elastic job lost j-worker-1-0 (rank 2) with its node n1; the survivors re-formed
    # at world size 2 (ranks 0, 1) and the replacement, same name, is Pending.
    def rec(rank, pod, node, seen):
        return D.RankProgress(rank=rank, incarnation=0, step=40, last_seen=seen, advanced_at=seen, pod_name=pod,
                              node_name=node, step_times=(0.1,))

    records = [rec(0, "j-worker-0-0", "n0", 99.0), rec(1, "j-worker-2-0", "n2", 99.0),
               rec(2, "j-worker-1-0", "n1", 0.0)]

    class Beats:
        def ranks(self, ns, name):
            return list(records)

        def workers(self, ns, name):
            return []

        def reports(self, ns, name):
            return []

        def launchers(self, ns, name):
            return []

        def newest_heard(self):
            return 100.0

        def all_ranks(self):
            return list(records)

    def raw(index, node, phase):
        spec = {"containers": [{"name": "trainer"}], **({"nodeName": node} if node else {})}
        return {"metadata": {"name": f"j-worker-{index}-0", "labels": {L.REPLICA_INDEX: str(index),
                                                                       L.INCARNATION: "0"}},
                "spec": spec, "status": {"phase": phase}}

    ready = [{"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
             for n in ("n0", "n2")]
    shell = RecoveryShell(Api(nodes=ready), Beats(), mono=lambda: 100.0)  # type: ignore[arg-type]
    obs = shell.observe("ns", "j", pod_views(raw(0, "n0", "Running"), raw(1, None, "Pending"), raw(2, "n2", "Running")))
    assert [r.rank for r in obs.ranks] == [0, 1]

    def decide(o):
        return F.decide(obs=o, incarnation=0, desired=3, restarts={}, incidents=[],
                        policy=R.Policy(elastic=True, min_replicas=2), rules=(),
                        t=D.Timeouts(heartbeat_s=30, interval_s=1), now=dt.datetime.now(dt.timezone.utc))

    assert decide(obs) is None
    # with the lost pod's record, its 100 s of silence would be pinned on the replacement
    stale = decide(dataclasses.replace(obs, ranks=tuple(records)))
    assert (stale.action, stale.finding.cause, stale.pods) == ("replace", D.HEARTBEAT_LOST, ("j-worker-1-0",))


def test_a_drain_command_is_sent_once_per_drain_and_again_by_a_restarted_operator():
    class Beats:
        def __init__(self):
            self.sent: list[tuple] = []

        def request_checkpoint(self, ns, name, *, stop=False, reason=""):
            self.sent.append((ns, name, stop, reason))

        def forget(self, ns, name):
            pass

    beats = Beats()
    shell = RecoveryShell(Api(), beats)  # type: ignore[arg-type]
    shell.drain(JOB, "ScaleDown", "2026-01-01T12:00:00Z")   # the pass that starts the drain
    shell.drain(JOB, "ScaleDown", "2026-01-01T12:00:00Z")   # the passes that wait for it
    shell.drain(JOB, None, "")                              # no drain
    assert beats.sent == [("ns", "j", True, "ScaleDown")]
    shell.drain(JOB, "Preemption", "2026-01-01T12:05:00Z")  # a later drain is a new command
    assert len(beats.sent) == 2
    # The operator restarts mid-drain: the command lived only in the old process.
    restarted = RecoveryShell(Api(), beats)  # type: ignore[arg-type]
    restarted.drain(JOB, "Preemption", "2026-01-01T12:05:00Z")
    restarted.drain(JOB, "Preemption", "2026-01-01T12:05:00Z")
    assert beats.sent[2:] == [("ns", "j", True, "Preemption")]
