"""Issue 12's detection slice, the pure rules and their shells: a lost node seen from the heartbeat
stream (every rank on it quiet at once, its kubelet silent while another node's answers) and a
stuck collective (every rank alive, beating and waiting in a collective)."""
from __future__ import annotations

import dataclasses

import datetime as dt
from types import SimpleNamespace

from stoker.common import labels as L
from stoker.operator import detection as D
from stoker.operator import heartbeat_checks as HC
from stoker.operator import heartbeats as H
from stoker.operator.node_probe import NodeProbe, verdict
from stoker.operator.peer_errors import PEER_SETTLE_S
from stoker.operator.podview import pod_view

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
T = D.Timeouts(interval_s=1.0)


def rank(r, node, seen=100.0, connected=True, step=40, activity="compute", since=None, times=(0.1,), **kw):
    return D.RankProgress(rank=r, incarnation=0, step=step, last_seen=seen, advanced_at=kw.pop("advanced", 90.0),
                          pod_name=f"j-worker-{r}-0", node_name=node, connected=connected, step_times=times,
                          activity=activity, activity_since=since, **kw)


def pod(index, node, exit_code=None, message=""):
    st: dict = {"phase": "Running"}
    if exit_code is not None:
        st = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "finishedAt": "2026-01-01T11:59:58Z", "message": message}}}]}
    return pod_view({"metadata": {"name": f"j-worker-{index}-0",
                                  "labels": {L.REPLICA_INDEX: str(index), L.INCARNATION: "0"}},
                     "spec": {"nodeName": node, "containers": [{"name": "trainer"}]}, "status": st})


NODES = {n: D.NodeView(n, address=f"127.0.0.{i + 1}", kubelet_port=10250) for i, n in enumerate(("n0", "n1", "n2"))}


# ------------------------------------------------------------------ node lost from the heartbeat stream

def test_a_node_is_quiet_when_every_rank_heard_from_it_went_quiet_and_not_when_one_still_beats():
    ended = [rank(0, "n0"), rank(1, "n1", connected=False), rank(2, "n1", connected=False)]
    assert HC.quiet_nodes(ended, T, newest_heard=100.5) == {"n1"}
    # another job's rank on n1 still beats: the node is alive (one process crashed)
    assert HC.quiet_nodes([*ended, rank(7, "n1", seen=100.4)], T, newest_heard=100.5) == set()
    # silence counts once it passes 2 intervals while heartbeats keep arriving from elsewhere...
    def silent(now):
        return [rank(0, "n0", seen=now), rank(1, "n1", seen=100.5)]

    assert HC.quiet_nodes(silent(103.0), T, newest_heard=103.0) == {"n1"}
    assert HC.quiet_nodes(silent(102.0), T, newest_heard=102.0) == set()   # 1.5 s: not yet
    # ...never when nobody was heard (an operator that stalled): the reference is the newest message
    assert HC.quiet_nodes([rank(0, "n0", seen=100.0), rank(1, "n1", seen=100.0)], T, newest_heard=100.0) == set()
    # finished ranks end their streams on purpose
    assert HC.quiet_nodes([rank(0, "n0"), rank(1, "n1", connected=False, phase="FINISHED")], T, 100.5) == set()


def test_a_node_found_lost_outranks_the_survivors_broken_collective_and_names_node_loss():
    ranks = [rank(0, "n0", seen=101.0), rank(1, "n1", seen=100.0, connected=False)]
    pods = [pod(0, "n0", exit_code=1, message="RuntimeError: Connection reset by peer"), pod(1, "n1")]
    before = D.detect(pods, NODES, ranks, T, 101.5, NOW, incarnation=0)
    assert before is not None and before.cause == D.PEER_LOST and before.settle_s > 0  # waits for NotReady today
    f = D.detect(pods, NODES, ranks, T, 101.5, NOW, incarnation=0, lost_nodes=frozenset({"n1"}))
    assert (f.cause, f.node, f.pod, f.rank, f.budget) == (D.NODE_LOST, "n1", "j-worker-1-0", 1, "infrastructure")
    assert "node n1" in f.message and "kubelet does not answer" in f.message and f.settle_s == 0
    # a pod that shows its own cause still wins (the crash came first)
    crashed = [pod(0, "n0", exit_code=137), pod(1, "n1")]
    assert D.detect(crashed, NODES, ranks, T, 101.5, NOW, incarnation=0,
                    lost_nodes=frozenset({"n1"})).cause == D.WORKER_KILLED
    assert PEER_SETTLE_S > 0


def test_one_crashed_process_is_not_a_lost_node_when_its_kubelet_answers():
    probe = NodeProbe(connect=lambda addr, port: True, clock=lambda: 0.0)   # every kubelet answers
    assert probe.lost([NODES["n1"]], [NODES["n0"]]) == set()
    ranks = [rank(0, "n0", seen=101.0), rank(1, "n1", seen=100.0, connected=False)]
    assert D.detect([pod(0, "n0"), pod(1, "n1")], NODES, ranks, T, 101.5, NOW, incarnation=0,
                    lost_nodes=frozenset()) is None   # the pod watch or the launcher will tell


def test_the_probe_calls_a_node_lost_only_when_another_kubelet_answers():
    down = {"127.0.0.2"}
    probe = NodeProbe(connect=lambda addr, port: addr not in down, clock=lambda: 0.0)
    assert probe.lost([NODES["n1"]], [NODES["n0"]]) == {"n1"}
    # a network policy between the operator and every kubelet: nothing is concluded
    blind = NodeProbe(connect=lambda addr, port: False, clock=lambda: 0.0)
    assert blind.lost([NODES["n1"]], [NODES["n0"]]) == set()
    # no address (a node type without kubelet endpoint): not probed, not concluded
    assert probe.lost([D.NodeView("n9")], [NODES["n0"]]) == set()
    assert verdict({"n1": False}, {}, reached_before=True) == {"n1"}


def test_node_view_reads_the_kubelets_address_and_port():
    v = D.node_view({"metadata": {"name": "n1"}, "status": {
        "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.7"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}})
    assert (v.address, v.kubelet_port) == ("10.0.0.7", 10250)


# ------------------------------------------------------------------ stuck collective

def check(ranks, now):
    return HC.check_heartbeats(ranks, T, now, NOW, newest_heard=now)


def test_every_rank_waiting_in_a_collective_past_the_limit_is_a_stuck_collective():
    ranks = [rank(0, "n0", seen=109.0, activity="collective", since=100.0),
             rank(1, "n1", seen=109.0, activity="collective", since=102.0)]
    assert check(ranks, 107.5) is None                # rank 1 entered 5.5 s ago: under 6 s
    f = check(ranks, 108.5)
    assert (f.cause, f.rank, f.budget) == (D.COLLECTIVE_STUCK, 1, "infrastructure")  # rank 1 entered last
    assert "every rank has waited in a collective for 6.5s" in f.message


def test_a_long_data_compute_or_checkpoint_phase_on_any_rank_is_not_a_stuck_collective():
    for other in ("data", "compute", "checkpoint"):
        ranks = [rank(0, "n0", seen=129.0, activity="collective", since=100.0),
                 rank(1, "n1", seen=129.0, activity=other, since=100.0)]
        assert check(ranks, 120.0) is None, other    # the others wait for it: a slow rank, not a stuck one
    # slow steps raise the limit to 2x the slowest step
    slow = [rank(r, f"n{r}", seen=109.0, activity="collective", since=100.0, times=(5.0,)) for r in (0, 1)]
    assert check(slow, 108.0) is None and check(slow, 110.5).cause == D.COLLECTIVE_STUCK
    # before the first step (process groups forming, the restore) it is the startup allowance's business
    first = [rank(r, f"n{r}", seen=119.5, step=-1, activity="collective", since=100.0) for r in (0, 1)]
    assert check(first, 120.0) is None


def test_the_watchdog_asks_for_a_pass_once_when_every_rank_has_waited_in_a_collective_long_enough():
    clock = [100.0]
    hb = H.OperatorHeartbeats(None, on_change=lambda ns, n: None, clock=lambda: clock[0],  # type: ignore[arg-type]
                              collective_after_s=6.0)
    for r in (0, 1):
        hb.tracker.observe("ns", "j", rank=r, incarnation=0, step=5, now=100.0, node_name=f"n{r}",
                           activity="collective", activity_s=r * 1.0)
    assert hb.tracker.ranks("ns", "j")[1].activity_since == 99.0
    clock[0] = 105.5
    assert hb.silent_now() == []
    clock[0] = 106.5
    assert hb.silent_now() == [("ns", "j")]
    assert hb.silent_now() == []                       # once per crossing
    hb.stop()


def test_the_sdk_sends_what_the_trainer_does_and_for_how_long():
    from stoker.worker.sdk import Session

    s = Session(None, None)
    assert s._build_message(1).activity == ""
    s.set_activity("collective")
    s._activity = ("collective", s._activity[1] - 4.0)   # entered 4 s ago
    msg = s._build_message(2)
    assert msg.activity == "collective" and 4.0 <= msg.activity_seconds < 5.0
    s.set_activity("collective")                          # the same activity again keeps its start
    assert s._build_message(3).activity_seconds >= 4.0


def test_the_shell_probes_a_quiet_node_against_one_still_heard_and_passes_it_on_as_lost():
    from stoker.operator.recovery_shell import RecoveryShell
    from tests.recovery_tests.test_recovery_shell import Api

    records = [rank(0, "n0", seen=100.0), rank(1, "n1", seen=99.0, connected=False)]

    beats = SimpleNamespace(ranks=lambda ns, name: list(records), all_ranks=lambda: list(records), secret_suffix="",
                            workers=lambda ns, name: [], reports=lambda ns, name: [], launchers=lambda ns, name: [],
                            newest_heard=lambda: 100.0)

    nodes = [{"metadata": {"name": n}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}} for n, ip in (("n0", "10.0.0.1"), ("n1", "10.0.0.2"))]
    dialed: list[str] = []

    def connect(addr, port):
        dialed.append(addr)
        return addr != "10.0.0.2"

    shell = RecoveryShell(Api(nodes=nodes), beats, mono=lambda: 100.0)  # type: ignore[arg-type]
    shell.probe = NodeProbe(connect=connect, clock=lambda: 0.0)
    obs = shell.observe("ns", "j", [pod(0, "n0"), pod(1, "n1")])
    assert obs.lost_nodes == {"n1"} and sorted(dialed) == ["10.0.0.1", "10.0.0.2"]
    assert obs.held_lost == {"n1"}   # still Ready to the API: new pods are kept off it (node_exclusion.py)
    made = shell.prepare_pod({"metadata": {}, "spec": {"containers": [{"name": "trainer"}]}}, "j", ())
    assert made["metadata"]["annotations"] == {"stoker.dev/excluded-nodes": "n1"}
    records[1] = rank(1, "n1", seen=100.0)   # both beat: nothing concluded; the held node is dialed again
    dialed.clear()
    shell.probe = NodeProbe(connect=connect, clock=lambda: 0.0)   # (a new probe learns each node once)
    obs = shell.observe("ns", "j", [pod(0, "n0"), pod(1, "n1")])
    assert obs.lost_nodes == set() and obs.held_lost == {"n1"} and sorted(dialed) == ["10.0.0.1", "10.0.0.2"]
    dialed.clear()
    shell.observe("ns", "j", [pod(0, "n0"), pod(1, "n1")])
    assert dialed == []   # learned, and the held node's answer is still fresh (TTL)
    shell.probe = NodeProbe(connect=lambda addr, port: True, clock=lambda: 0.0)   # it answers again
    assert shell.observe("ns", "j", [pod(0, "n0"), pod(1, "n1")]).held_lost == set()


def test_with_every_node_of_the_job_quiet_the_control_is_a_node_another_job_beats_from_not_the_first_by_name():
    """CI: the survivor's trainer had exited on its broken collective (stream ended) when the pass
    came, so no node of the job was heard; the control was then the first nodes by name -- kwok nodes
    without a kubelet -- and nothing was concluded until NotReady, 18 s later."""
    from stoker.operator.recovery_shell import RecoveryShell
    from tests.recovery_tests.test_recovery_shell import Api

    records = [rank(0, "n0", seen=99.0, connected=False), rank(1, "n1", seen=99.0, connected=False)]
    other = dataclasses.replace(rank(0, "z9", seen=100.0), pod_name="other-worker-0-0")
    beats = SimpleNamespace(ranks=lambda ns, name: list(records), all_ranks=lambda: [*records, other],
                            workers=lambda ns, name: [], reports=lambda ns, name: [], launchers=lambda ns, name: [],
                            newest_heard=lambda: 100.0,
                            secret_suffix="")
    ips = (("a-kwok-0", "10.0.9.1"), ("a-kwok-1", "10.0.9.2"), ("n0", "10.0.0.1"), ("n1", "10.0.0.2"),
           ("z9", "10.0.0.9"))
    nodes = [{"metadata": {"name": n}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}} for n, ip in ips]
    answer = {"10.0.0.1": True, "10.0.0.2": False, "10.0.0.9": True}   # kwok nodes: nobody listens
    shell = RecoveryShell(Api(nodes=nodes), beats, mono=lambda: 100.0)  # type: ignore[arg-type]
    shell.probe = NodeProbe(connect=lambda addr, port: answer.get(addr, False), clock=lambda: 0.0)
    assert shell.observe("ns", "j", [pod(0, "n0"), pod(1, "n1")]).lost_nodes == {"n1"}


def test_a_job_whose_every_rank_ran_on_the_node_it_lost_is_judged_by_that_kubelets_earlier_answer():
    """CI: both pods of the job on the node that was lost, no other job running: no control to
    dial, the kwok nodes first by name never answer, so nothing was concluded until NotReady."""
    from stoker.operator.recovery_shell import RecoveryShell
    from tests.recovery_tests.test_recovery_shell import Api

    records = [rank(0, "n1", seen=100.0), rank(1, "n1", seen=100.0)]
    beats = SimpleNamespace(ranks=lambda ns, name: list(records), all_ranks=lambda: list(records), secret_suffix="",
                            workers=lambda ns, name: [], reports=lambda ns, name: [], launchers=lambda ns, name: [],
                            newest_heard=lambda: 100.0)
    nodes = [{"metadata": {"name": n}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}} for n, ip in (("a-kwok", "10.0.9.1"),
                                                                             ("n1", "10.0.0.2"))]
    up = {"10.0.0.2": True}
    clock = [0.0]
    shell = RecoveryShell(Api(nodes=nodes), beats, mono=lambda: 100.0)  # type: ignore[arg-type]
    shell.probe = NodeProbe(connect=lambda addr, port: up.get(addr, False), clock=lambda: clock[0])
    pods = [pod(0, "n1"), pod(1, "n1")]
    assert shell.observe("ns", "j", pods).lost_nodes == set()        # healthy: n1 learned, it answers
    records[:] = [dataclasses.replace(r, connected=False) for r in records]
    up["10.0.0.2"], clock[0] = False, 5.0                              # the machine is gone
    assert shell.observe("ns", "j", pods).lost_nodes == {"n1"}
