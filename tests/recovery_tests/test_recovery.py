"""Recovery decisions: honest budgets, repeated user errors, node avoidance, drains."""
from __future__ import annotations

import dataclasses

import pytest

from stoker.operator import detection as D
from stoker.operator import recovery as R
from stoker.operator.podview import PodView

NO_RESTARTS = {"userError": 0, "infrastructure": 0, "preemption": 0, "total": 0}


def finding(cause=D.WORKER_CRASHED, step=7, exit_code=1, node="n1", error=""):
    return D.Finding(cause, f"{cause} happened", pod="j-worker-0-0", rank=0, node=node,
                     exit_code=exit_code, step=step, error=error)


def inc(cause, step=7, exit_code=1, node="n1", kind="Restart", original=None):
    out = {"kind": kind, "detectedCause": cause, "step": step, "exitCode": exit_code, "node": node}
    if original:
        out["originalCause"] = original
    return out


@pytest.mark.parametrize("cause, budget, counted", [
    (D.WORKER_CRASHED, "userError", True),
    (D.OOM_KILLED, "userError", True),
    (D.WORKER_KILLED, "infrastructure", False),
    (D.NODE_LOST, "infrastructure", False),
    (D.EVICTED, "infrastructure", False),
    (D.HEARTBEAT_LOST, "infrastructure", False),
    (D.HANG, "infrastructure", False),
    (D.PREEMPTED, "preemption", False),
])
def test_only_user_errors_spend_the_users_budget(cause, budget, counted):
    a = R.decide(finding(cause), NO_RESTARTS, [], R.Policy(max_restarts=3))
    assert isinstance(a, R.Restart) and (a.budget, a.counted) == (budget, counted)
    assert R.count(NO_RESTARTS, a)[budget] == 1 and R.count(NO_RESTARTS, a)["total"] == 1


def test_infrastructure_failures_restart_even_with_a_spent_user_budget():
    spent = {"userError": 3, "infrastructure": 7, "preemption": 4, "total": 14}
    for cause in (D.NODE_LOST, D.PREEMPTED, D.WORKER_KILLED):
        assert isinstance(R.decide(finding(cause, step=None), spent, [], R.Policy(max_restarts=3)), R.Restart)


def test_a_spent_budget_fails_the_job_with_the_reason_and_the_last_error_lines():
    err = "\n".join(f"line {i}" for i in range(20)) + "\nValueError: loss is nan"
    a = R.decide(finding(error=err, step=None), {"userError": 2, "total": 2}, [], R.Policy(max_restarts=2))
    assert isinstance(a, R.Fail) and a.reason == "RestartLimitExceeded"
    assert "maxRestarts=2" in a.message and "ValueError: loss is nan" in a.message
    assert "line 14" not in a.message  # only the last lines


def test_the_infrastructure_safety_limit_fails_with_its_own_reason():
    a = R.decide(finding(D.NODE_LOST), {"infrastructure": 5}, [], R.Policy(max_infra_restarts=5))
    assert isinstance(a, R.Fail) and a.reason == "InfrastructureRestartLimitExceeded"


def test_the_same_failure_at_the_same_step_again_and_again_is_a_user_error():
    hist = [inc(D.WORKER_KILLED, step=7, exit_code=137), inc(D.WORKER_KILLED, step=7, exit_code=137)]
    f = finding(D.WORKER_KILLED, step=7, exit_code=137)
    a = R.decide(f, NO_RESTARTS, hist, R.Policy(max_restarts=3, repeat_limit=3))
    assert isinstance(a, R.Restart) and a.finding.cause == D.USER_ERROR and a.counted and a.repeated == 3
    assert "3 times in a row" in a.message
    # one repetition short: still what it looked like
    a = R.decide(f, NO_RESTARTS, hist[:1], R.Policy(repeat_limit=3))
    assert a.finding.cause == D.WORKER_KILLED and not a.counted


def test_repeated_user_error_with_a_spent_budget_names_the_repetition():
    hist = [inc(D.WORKER_CRASHED, exit_code=3)] * 2
    a = R.decide(finding(exit_code=3, error="boom"), {"userError": 2}, hist, R.Policy(max_restarts=2))
    assert isinstance(a, R.Fail) and a.reason == "RepeatedUserError" and "boom" in a.message


@pytest.mark.parametrize("hist, n", [
    ([], 1),
    ([inc(D.WORKER_CRASHED)], 2),
    ([inc(D.WORKER_CRASHED, step=6), inc(D.WORKER_CRASHED)], 2),        # only the trailing run counts
    ([inc(D.WORKER_CRASHED), inc(D.WORKER_CRASHED, exit_code=2)], 1),   # other exit code
    ([inc(D.WORKER_CRASHED), inc(D.HANG)], 1),                          # other cause
    ([inc(D.USER_ERROR, original=D.WORKER_CRASHED)] * 2, 3),            # reclassified ones still match
    ([inc(D.WORKER_CRASHED), {"kind": "JobFailed"}], 2),                # non-restart entries are skipped
])
def test_repeats(hist, n):
    assert R.repeats(hist, finding()) == n


def test_unknown_step_never_repeats():
    assert R.repeats([inc(D.WORKER_CRASHED, step=None)] * 5, finding(step=None)) == 1


def test_external_causes_are_never_turned_into_user_errors():
    hist = [inc(D.NODE_LOST, exit_code=None)] * 5
    a = R.decide(finding(D.NODE_LOST, exit_code=None), NO_RESTARTS, hist, R.Policy())
    assert a.finding.cause == D.NODE_LOST and not a.counted


def test_elastic_jobs_replace_failed_pods_while_enough_workers_survive():
    p = R.Policy(elastic=True, min_replicas=2)
    a = R.decide(finding(D.NODE_LOST), NO_RESTARTS, [], p, failed_pods=["j-worker-2-0"], survivors=2)
    assert isinstance(a, R.Replace) and a.pods == ("j-worker-2-0",) and a.avoid_nodes == ("n1",)
    # too few survivors, or a user error: the whole job restarts
    assert isinstance(R.decide(finding(D.NODE_LOST), NO_RESTARTS, [], p, failed_pods=["x"], survivors=1), R.Restart)
    assert isinstance(R.decide(finding(), NO_RESTARTS, [], p, failed_pods=["x"], survivors=3), R.Restart)


def test_replacements_avoid_recently_failed_nodes_for_node_causes_only():
    hist = [inc(D.NODE_LOST, node="a"), inc(D.WORKER_CRASHED, node="b"), inc(D.HEARTBEAT_LOST, node="c"),
            inc(D.PREEMPTED, node="d"), inc(D.EVICTED, node="e"), inc(D.HANG, node="g")]
    assert R.nodes_to_avoid(hist, finding(D.NODE_LOST, node="f"), max_n=3) == ("f", "g", "e")
    assert R.nodes_to_avoid(hist, None, max_n=10) == ("g", "e", "c", "a")
    assert R.nodes_to_avoid([], finding(D.WORKER_CRASHED)) == ()


def test_a_hang_or_a_silent_process_is_not_its_nodes_fault_only_preferred_against():
    """Issue 11: SIGSTOP on node a, then on node b: blaming each hang on its node (a
    required exclusion) left a 2-node pool with no node to go to. A hang is not counted
    against its node (NodeHealth: no report, no cordon); replacements only prefer other
    nodes, because a node being lost is often first seen as a hang (bench/chaos.py)."""
    assert D.HANG not in R.NODE_CAUSES and D.HEARTBEAT_LOST not in R.NODE_CAUSES
    hist = [inc(D.HANG, node="a"), inc(D.WORKER_KILLED, node="b")]
    avoid = R.nodes_to_avoid(hist, finding(D.HANG, node="b"))
    assert avoid == ("b", "a")
    spec = R.with_node_anti_affinity({"containers": []}, avoid)
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["nodeAffinity"]


def test_avoidance_is_preferred_never_required_and_keeps_the_users_terms():
    user_required = {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}
    spec = {"containers": [], "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": user_required,
                         "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {}}]},
        "podAntiAffinity": {"x": 1}}}
    out = R.with_node_anti_affinity(spec, ["n2", "n1"])
    na = out["affinity"]["nodeAffinity"]
    # the user's required terms are untouched: avoidance alone can never make a pod unschedulable
    assert na["requiredDuringSchedulingIgnoredDuringExecution"] == user_required
    # one expression per node: the API server takes one value for matchFields In/NotIn
    want = [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]},
            {"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]
    assert na["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {"weight": 1, "preference": {}}, {"weight": R.AVOID_WEIGHT, "preference": {"matchFields": want}}]
    assert out["affinity"]["podAntiAffinity"] == {"x": 1}
    assert len(spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]) == 1  # input untouched
    # applied again (a later restart): one avoidance term, the newest set of nodes
    again = R.with_node_anti_affinity(out, ["n3"])["affinity"]["nodeAffinity"]
    assert again["preferredDuringSchedulingIgnoredDuringExecution"][-1]["preference"]["matchFields"] == [
        {"key": "metadata.name", "operator": "NotIn", "values": ["n3"]}]
    assert len(again["preferredDuringSchedulingIgnoredDuringExecution"]) == 2


def test_anti_affinity_on_a_bare_spec_and_with_no_nodes():
    out = R.with_node_anti_affinity({"containers": []}, ["n1"])
    assert out["affinity"]["nodeAffinity"] == {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchFields": [{"key": "metadata.name", "operator": "NotIn",
                                                        "values": ["n1"]}]}}]}
    assert R.with_node_anti_affinity({"containers": []}, []) == {"containers": []}


def test_a_node_that_keeps_failing_jobs_is_reported_once_and_cordoned_by_policy():
    now = [0.0]
    h = R.NodeHealth(report_after=2, cordon_after=3, window_s=100, clock=lambda: now[0])
    v1 = h.failed("n1", "a")
    v2 = h.failed("n1", "b")
    v3 = h.failed("n1", "c")
    v4 = h.failed("n1", "d")
    assert [(v.failures, v.report, v.cordon) for v in (v1, v2, v3, v4)] == [
        (1, False, False), (2, True, False), (3, False, True), (4, False, False)]
    now[0] = 500.0  # old failures leave the window
    assert h.failures("n1") == 0
    assert not R.NodeHealth(report_after=1, cordon_after=0).failed("n2", "a").cordon


@pytest.mark.parametrize("acks, now, done", [
    ({0: "DONE", 1: "DONE"}, 1.0, True),
    ({0: "DONE", 1: "RECEIVED"}, 1.0, False),
    ({0: "DONE"}, 1.0, False),
    ({0: "DONE", 1: "REJECTED"}, 1.0, True),
    ({0: "DONE"}, 30.0, True),     # grace period over
])
def test_drain_waits_for_every_rank_or_the_grace_period(acks, now, done):
    assert R.drain_done(acks, 2, 0.0, now, 30.0)[0] is done


def test_last_error_lines():
    assert R.last_error_lines("a\n\n b \nc\n", lines=2) == " b\nc"
    assert R.last_error_lines("") == ""
    # A killed trainer's last lines are info notices, not an error (seen in `make demo`'s incident).
    info = '{"level": "info", "msg": "checkpoint.staged step=20"}'
    assert R.last_error_lines(' "level": "info", "msg": "Found credentials"}\n' + info) == ""
    assert R.last_error_lines(info + '\n{"level": "error", "msg": "boom"}\nTraceback (most recent call last):') == \
        '{"level": "error", "msg": "boom"}\nTraceback (most recent call last):'


def test_a_replaced_pods_last_heartbeats_do_not_speak_for_its_replacement():
    def rec(rank, pod, node, seen=100.0):
        return D.RankProgress(rank=rank, incarnation=0, step=40, last_seen=seen, advanced_at=seen, pod_name=pod,
                              node_name=node)

    lost = rec(2, "j-worker-1-0", "n1", seen=0.0)  # its node died with it; nobody took rank 2 over
    alive = rec(0, "j-worker-0-0", "n0")
    nodeless = rec(1, "j-worker-2-0", "")
    gone = rec(3, "j-worker-3-0", "n3")  # no pod of that name any more: the caller's business
    running = [PodView("j-worker-0-0", 0, 0, "Running", "n0"), PodView("j-worker-2-0", 2, 0, "Running", "n2")]
    waiting = PodView("j-worker-1-0", 1, 0, "Pending", None)  # the replacement: same name, no node yet
    assert R.current_records([lost, alive, nodeless, gone], running + [waiting]) == [alive, nodeless, gone]
    placed = dataclasses.replace(waiting, phase="Running", node="n9")
    own = rec(2, "j-worker-1-0", "n9")
    assert R.current_records([lost, own], running + [placed]) == [own]
    # the lost pod itself, not yet replaced: its record is its own
    assert R.current_records([lost], [PodView("j-worker-1-0", 1, 0, "Running", "n1")]) == [lost]
