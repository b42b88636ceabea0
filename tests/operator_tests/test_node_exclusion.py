"""New pods are kept off a node found lost before its NotReady, and the exclusion does not outlive
its reason (node_exclusion.py)."""
from __future__ import annotations

import copy

from stoker.operator import node_exclusion as X
from stoker.operator import supervision as S
from stoker.operator.detection import NodeView
from stoker.operator.jobspec import job_view
from stoker.operator.pods import RenderConfig, render_pod
from stoker.operator.podview import pod_view
from stoker.operator.reconcile import plan
from tests.operator_tests.helpers import NOW, job_body, observed


def manifest(**spec):
    body = job_body()
    pod = copy.deepcopy(render_pod(job_view(body), 1, 0, RenderConfig()))
    pod["spec"].update(spec)
    return pod


def test_a_pod_gets_a_required_not_in_for_each_held_node_and_names_them():
    pod = X.exclude(manifest(), ["n2", "n1"])
    [term] = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]},
                                   {"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]
    assert pod_view(pod).excluded_nodes == ("n1", "n2")
    assert X.exclude(manifest(), []) == manifest()


def test_the_users_required_terms_each_keep_their_own_and_get_the_exclusion():
    """nodeSelectorTerms are ORed: a term without the exclusion would let the pod onto the node."""
    mine = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]}]}}
    pod = X.exclude(manifest(affinity={"nodeAffinity": mine}), ["n1"])
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["a"], ["b"]]
    assert all(t["matchFields"] == [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}] for t in terms)


def _pending(excluded, node=None):
    import dataclasses
    v = observed(job_body(), 1, phase="Pending", ready=False)
    return dataclasses.replace(v, excluded_nodes=tuple(excluded), node=node)


def test_a_waiting_pod_is_recreated_only_once_its_excluded_node_is_ready_and_no_longer_held():
    ready, notready = NodeView("n1"), NodeView("n1", ready="Unknown", unreachable=True)
    pods = [_pending(["n1"])]
    assert X.stale(pods, {"n1": ready}, frozenset({"n1"})) == []        # still held lost: keep it off
    assert X.stale(pods, {"n1": notready}, frozenset()) == []           # NotReady: its taint keeps pods off
    assert X.stale(pods, {}, frozenset()) == []                         # deleted node: nothing to wait for
    assert X.stale(pods, {"n1": ready}, frozenset()) == ["demo-worker-1-0"]   # healed: recreate without
    assert X.stale([_pending(["n1"], node="n3")], {"n1": ready}, frozenset()) == []   # already placed
    assert X.stale([_pending([])], {"n1": ready}, frozenset()) == []


def test_the_pass_deletes_the_pod_whose_exclusion_is_stale_and_says_why():
    body = job_body(status={"phase": "Running", "incarnation": 0})
    pods = [observed(body, 0), _pending(["n1"])]
    obs = S.Observed(facts=tuple(pods), nodes={"n1": NodeView("n1")}, nodes_listed=True)
    p = plan(job_view(body), pods, NOW, obs)
    assert p.delete == ["demo-worker-1-0"] and p.create == []
    assert any(e.reason == "NodeExclusionLifted" for e in p.events)
    held = S.Observed(facts=tuple(pods), nodes={"n1": NodeView("n1")}, nodes_listed=True, held_lost=frozenset({"n1"}))
    assert plan(job_view(body), pods, NOW, held).delete == []
