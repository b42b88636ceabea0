"""Detection: pod statuses, node conditions and heartbeat timelines -> one cause."""
from __future__ import annotations

import datetime as dt

import pytest

from stoker.common import labels as L
from stoker.operator import detection as D
from stoker.operator import heartbeats as H
from stoker.operator.peer_errors import PEER_SETTLE_S
from stoker.operator.podview import pod_view

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def t(seconds_ago: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(index=0, incarnation=0, phase="Running", node="n1", exit_code=None, reason="", term_reason="",
        finished_ago=None, disruption=None, deleting=False, message=""):
    st: dict = {"phase": phase, "conditions": []}
    if reason:
        st["reason"] = reason
    if disruption:
        st["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if exit_code is not None:
        term = {"exitCode": exit_code}
        if term_reason:
            term["reason"] = term_reason
        if finished_ago is not None:
            term["finishedAt"] = t(finished_ago)
        if message:
            term["message"] = message
        st["containerStatuses"] = [{"name": "trainer", "state": {"terminated": term}}]
    meta = {"name": f"j-worker-{index}-{incarnation}",
            "labels": {L.REPLICA_INDEX: str(index), L.INCARNATION: str(incarnation)}}
    if deleting:
        meta["deletionTimestamp"] = t(30)
    spec = {"containers": [{"name": "trainer"}]}
    if node:
        spec["nodeName"] = node
    p = pod_view({"metadata": meta, "spec": spec, "status": st})
    assert p is not None
    return p


def node(name="n1", ready="True", taints=(), unschedulable=False, since_ago=20, beat_ago=15):
    return D.node_view({"metadata": {"name": name},
                        "spec": {"taints": [{"key": k, "effect": "NoExecute"} for k in taints],
                                 "unschedulable": unschedulable},
                        "status": {"conditions": [{"type": "Ready", "status": ready,
                                                   "lastTransitionTime": t(since_ago),
                                                   "lastHeartbeatTime": t(beat_ago)}]}})


def test_pod_facts_ignores_foreign_pods():
    assert pod_view({"metadata": {"name": "x", "labels": {}}}) is None


@pytest.mark.parametrize("p, n, cause", [
    (pod(phase="Failed", exit_code=137, disruption="PreemptionByScheduler"), node(), D.PREEMPTED),
    (pod(phase="Failed", reason="Preempted"), node(), D.PREEMPTED),
    (pod(phase="Failed", reason="Evicted"), node(), D.EVICTED),
    (pod(phase="Failed", exit_code=143, disruption="DeletionByTaintManager"), node(), D.EVICTED),
    (pod(phase="Running"), node(ready="Unknown", taints=[D.UNREACHABLE_TAINT]), D.NODE_LOST),
    (pod(phase="Running"), node(ready="False"), D.NODE_LOST),
    (pod(phase="Unknown"), node(ready="Unknown"), D.NODE_LOST),
    (pod(phase="Failed", exit_code=137, term_reason="OOMKilled"), node(), D.OOM_KILLED),
    (pod(phase="Failed", exit_code=137), node(), D.WORKER_KILLED),
    (pod(phase="Failed", exit_code=143), node(), D.WORKER_KILLED),
    (pod(phase="Failed", exit_code=1), node(), D.WORKER_CRASHED),
    (pod(phase="Failed", exit_code=3), node(), D.WORKER_CRASHED),
    (pod(phase="Failed", exit_code=86), node(), D.RENDEZVOUS_LOST),
], ids=["preempted-condition", "preempted-reason", "evicted", "taint-manager", "node-unreachable",
        "node-notready", "pod-unknown-on-lost-node", "oom", "sigkill", "sigterm", "exit-1", "exit-3",
        "rendezvous-lost"])
def test_classify_pod(p, n, cause):
    f = D.classify_pod(p, n)
    assert f is not None and f.cause == cause
    assert f.pod == p.name and f.node == "n1"


def test_healthy_and_succeeded_pods_have_no_cause():
    assert D.classify_pod(pod(), node()) is None
    assert D.classify_pod(pod(phase="Pending", node=None), None) is None
    assert D.classify_pod(pod(phase="Succeeded", exit_code=0), node(ready="Unknown")) is None


def test_a_deleted_node_is_a_lost_node_only_when_the_node_list_is_known():
    assert D.classify_pod(pod(), None, node_known=True).cause == D.NODE_LOST
    assert D.classify_pod(pod(), None, node_known=False) is None


def test_budget_classes():
    assert D.Finding(D.PREEMPTED, "").budget == "preemption"
    assert {D.Finding(c, "").budget for c in (D.NODE_LOST, D.EVICTED, D.WORKER_KILLED, D.HEARTBEAT_LOST, D.HANG,
                                              D.RENDEZVOUS_LOST)} \
        == {"infrastructure"}
    assert {D.Finding(c, "").budget for c in (D.WORKER_CRASHED, D.OOM_KILLED, D.USER_ERROR)} == {"userError"}


def test_signal_of_exit_codes():
    assert D.signal_of(137) == 9 and D.signal_of(143) == 15
    assert D.signal_of(1) is None and D.signal_of(None) is None and D.signal_of(128) is None


def test_root_cause_is_the_pod_that_failed_first_not_the_peers_that_died_after_it():
    pods = [pod(0, phase="Failed", exit_code=1, finished_ago=2, message="RuntimeError: gloo connection closed"),
            pod(1, phase="Failed", exit_code=137, finished_ago=5),
            pod(2, phase="Running")]
    f = D.detect(pods, {"n1": node()}, [], D.Timeouts(), 100.0, NOW, incarnation=0)
    assert f.cause == D.WORKER_KILLED and f.pod == "j-worker-1-0"
    assert f.onset == NOW - dt.timedelta(seconds=5)


def test_detect_only_looks_at_the_current_incarnation():
    pods = [pod(0, incarnation=0, phase="Failed", exit_code=1), pod(0, incarnation=1)]
    assert D.detect(pods, {"n1": node()}, [], D.Timeouts(), 0.0, NOW, incarnation=1) is None


def test_detect_fills_rank_step_and_error_from_the_heartbeat_of_the_failed_pod():
    pods = [pod(1, phase="Failed", exit_code=3, finished_ago=1)]
    ranks = [rp(0, step=7, pod_name="j-worker-0-0"), rp(1, step=7, pod_name="j-worker-1-0", error="ValueError: bad")]
    f = D.detect(pods, {"n1": node()}, ranks, D.Timeouts(), 100.0, NOW, incarnation=0)
    assert (f.cause, f.rank, f.step, f.error) == (D.WORKER_CRASHED, 1, 7, "ValueError: bad")


def test_node_loss_onset_is_the_last_node_heartbeat():
    f = D.detect([pod()], {"n1": node(ready="Unknown", beat_ago=12)}, [], D.Timeouts(), 0.0, NOW, incarnation=0)
    assert f.cause == D.NODE_LOST and f.onset == NOW - dt.timedelta(seconds=12)


def test_pods_stuck_terminating_on_lost_or_deleted_nodes_are_force_deleted():
    pods = [pod(0, deleting=True, node="lost"), pod(1, deleting=True, node="gone"),
            pod(2, deleting=True, node="ok"), pod(3, node="lost")]
    nodes = {"lost": node("lost", ready="Unknown"), "ok": node("ok")}
    assert D.force_delete(pods, nodes) == ["j-worker-0-0", "j-worker-1-0"]


# ---------------------------------------------------------------------------- heartbeats

def rp(rank, step=10, last_seen=100.0, advanced_at=100.0, phase="TRAINING", pod_name="", node_name="",
       step_times=(0.1,), error="", incarnation=0, checkpoint_s=None):
    return D.RankProgress(rank=rank, incarnation=incarnation, step=step, last_seen=last_seen,
                          advanced_at=advanced_at, pod_name=pod_name or f"j-worker-{rank}-0",
                          node_name=node_name or f"n{rank}", phase=phase, error=error,
                          step_times=tuple(step_times), checkpoint_s=checkpoint_s)


TO = D.Timeouts(heartbeat_s=30, progress_s=10, startup_s=60, interval_s=1)


@pytest.mark.parametrize("ranks, now, cause, rank", [
    # everyone talking and advancing
    ([rp(0), rp(1)], 105.0, None, None),
    # rank 1 silent past the heartbeat timeout: dead or partitioned
    ([rp(0, last_seen=140), rp(1, last_seen=100)], 140.0, D.HEARTBEAT_LOST, 1),
    # all talking, step stuck past the progress timeout: a hang (stuck collective)
    ([rp(0, last_seen=120, step=9), rp(1, last_seen=120)], 120.0, D.HANG, 0),
    # SIGSTOPped rank: others still beat, its beats stopped 3+ intervals ago -> frozen, caught before
    # the progress timeout
    ([rp(0, last_seen=115), rp(1, last_seen=103), rp(2, last_seen=115)], 115.0, D.HEARTBEAT_LOST, 1),
    # before the first step the startup allowance applies, not the progress timeout
    ([rp(0, step=-1, last_seen=150), rp(1, step=-1, last_seen=150)], 150.0, None, None),
    ([rp(0, step=-1, last_seen=165), rp(1, step=-1, last_seen=165)], 165.0, D.HANG, 0),
    # restoring a checkpoint counts as startup too
    ([rp(0, phase="RESTORING", last_seen=150)], 150.0, None, None),
    # a rank blocked in a save (storage retrying) holds the step legitimately...
    ([rp(0, phase="CHECKPOINTING", last_seen=150), rp(1, last_seen=150)], 150.0, None, None),
    # ...unless a rank went quiet: then the others are stuck in the save's collective with it (frozen)
    ([rp(0, phase="CHECKPOINTING", last_seen=120), rp(1, last_seen=105)], 120.0, D.HEARTBEAT_LOST, 1),
    # ...and not forever
    ([rp(0, phase="CHECKPOINTING", last_seen=420), rp(1, last_seen=420)], 420.0, D.HANG, 0),
    # finished ranks are not hung
    ([rp(0, phase="FINISHED", last_seen=10)], 150.0, None, None),
], ids=["healthy", "silent", "stuck", "sigstop", "startup-ok", "startup-expired", "restoring", "saving",
        "saving-with-a-quiet-rank", "saving-too-long", "finished"])
def test_heartbeat_timelines(ranks, now, cause, rank):
    f = D.check_heartbeats(ranks, TO, now, NOW)
    if cause is None:
        assert f is None
    else:
        assert f is not None and (f.cause, f.rank) == (cause, rank)
        assert f.onset is not None and f.onset <= NOW


def test_hang_onset_is_the_last_time_the_step_advanced():
    f = D.check_heartbeats([rp(0, last_seen=120, advanced_at=100)], TO, 120.0, NOW)
    assert f.onset == NOW - dt.timedelta(seconds=20)


def test_a_slow_step_is_not_mistaken_for_a_hang():
    slow = [rp(0, last_seen=140, advanced_at=100, step_times=(25.0, 30.0))]
    assert D.check_heartbeats(slow, TO, 140.0, NOW) is None             # 40 s < 2 x 30 s
    assert D.check_heartbeats(slow, TO, 161.0, NOW).cause == D.HANG      # 61 s > 60 s


def test_a_checkpoint_in_progress_extends_the_progress_timeout():
    r = [rp(0, last_seen=118, advanced_at=100, checkpoint_s=15.0)]
    assert D.check_heartbeats(r, TO, 118.0, NOW) is None


def test_the_end_of_a_save_that_held_the_step_is_not_a_hang():
    """Found by bench/chaos.py (S3 down 10 s, progressTimeoutSeconds 5): the coordinator's
    commit retried for 20 s with the ranks CHECKPOINTING (exempt), and the moment it
    ended, before the next step, the stall since the last step (20 s) read as a hang."""
    tr = H.ProgressTracker()
    tr.observe("ns", "j", rank=0, incarnation=0, step=24, now=0.0, step_time_s=0.1)
    tr.observe("ns", "j", rank=0, incarnation=0, step=25, now=0.1, step_time_s=0.1)
    for t in range(1, 21):
        r = tr.observe("ns", "j", rank=0, incarnation=0, step=25, now=float(t), phase="CHECKPOINTING")
        assert D.check_heartbeats([r], D.Timeouts(progress_s=5), float(t), NOW) is None
    r = tr.observe("ns", "j", rank=0, incarnation=0, step=25, now=20.5, phase="TRAINING")
    assert D.check_heartbeats([r], D.Timeouts(progress_s=5), 21.0, NOW) is None
    # ... and a step that then does not come is a hang again after the timeout
    assert D.check_heartbeats([r], D.Timeouts(progress_s=5), 26.0, NOW).cause == D.HANG


@pytest.mark.parametrize("t, times, ck, expect", [
    (D.Timeouts(progress_s=None), (), None, 30.0),                     # floor
    (D.Timeouts(progress_s=None), (0.5, 4.0, 1.0), None, 40.0),        # 10 x slowest
    (D.Timeouts(progress_s=None), (1000.0,), None, 3600.0),            # ceiling
    (D.Timeouts(progress_s=None), (4.0,), 12.0, 52.0),                 # + checkpoint time
    (D.Timeouts(progress_s=5), (0.1,), None, 5.0),                     # explicit wins...
    (D.Timeouts(progress_s=5), (4.0,), None, 8.0),                     # ...but never < 2 x slowest step
])
def test_progress_timeout_derivation(t, times, ck, expect):
    assert D.progress_timeout(t, times, ck) == pytest.approx(expect)


def test_tracker_measures_step_times_and_last_advance():
    tr = H.ProgressTracker()
    tr.observe("ns", "j", rank=0, incarnation=0, step=-1, now=0.0)
    tr.observe("ns", "j", rank=0, incarnation=0, step=0, now=5.0)
    tr.observe("ns", "j", rank=0, incarnation=0, step=10, now=10.0)
    r = tr.observe("ns", "j", rank=0, incarnation=0, step=10, now=14.0)
    assert r.advanced_at == 10.0 and r.last_seen == 14.0
    assert r.step_times == (pytest.approx(0.5),)
    r = tr.observe("ns", "j", rank=0, incarnation=0, step=11, now=15.0, step_time_s=0.2)
    assert r.step_times[-1] == pytest.approx(0.2)  # the worker's own figure wins


def test_tracker_resets_on_a_new_incarnation_and_on_an_in_place_restart():
    tr = H.ProgressTracker()
    tr.observe("ns", "j", rank=0, incarnation=0, step=5, now=0.0)
    tr.observe("ns", "j", rank=0, incarnation=0, step=8, now=3.0)
    r = tr.observe("ns", "j", rank=0, incarnation=0, step=2, now=50.0)  # restarted process, resumed earlier
    assert r.advanced_at == 50.0 and r.step_times == ()
    r = tr.observe("ns", "j", rank=0, incarnation=1, step=-1, now=60.0)
    assert r.advanced_at == 60.0 and tr.ranks("ns", "j", incarnation=0) == []
    assert [x.rank for x in tr.ranks("ns", "j", incarnation=1)] == [0]
    tr.forget("ns", "j")
    assert tr.ranks("ns", "j") == []


def test_tracker_notes_when_a_ranks_process_started_a_new_stream_is_a_new_process():
    tr = H.ProgressTracker()
    tr.observe("ns", "j", rank=0, incarnation=0, step=5, now=0.0, stream=1)
    r = tr.observe("ns", "j", rank=0, incarnation=0, step=6, now=1.0, stream=1)
    assert r.started_at == 0.0 and r.step_times
    r = tr.observe("ns", "j", rank=0, incarnation=0, step=6, now=4.0, stream=7)  # same step, new process
    assert r.started_at == 4.0 and r.advanced_at == 1.0
    assert tr.observe("ns", "j", rank=0, incarnation=0, step=7, now=5.0, stream=7).started_at == 4.0


def test_heartbeat_silence_after_a_pod_finished_is_not_a_failure():
    pods = [pod(0, phase="Succeeded", exit_code=0), pod(1)]
    ranks = [rp(0, last_seen=0.0), rp(1, last_seen=0.0)]
    assert D.detect(pods, {"n1": node()}, ranks, TO, 500.0, NOW, incarnation=0) is None


def started(index, seconds_ago, phase="Running"):
    """A worker pod whose trainer container started ``seconds_ago`` (parsed like a real pod)."""
    raw = {"metadata": {"name": f"j-worker-{index}-0", "labels": {L.REPLICA_INDEX: str(index), L.INCARNATION: "0"}},
           "spec": {"containers": [{"name": "trainer"}], "nodeName": f"n{index}"},
           "status": {"phase": phase, "startTime": t(seconds_ago + 1),
                      "containerStatuses": [{"name": "trainer", "state": {"running": {"startedAt": t(seconds_ago)}}}]}}
    p = pod_view(raw)
    assert p is not None and p.started_at == NOW - dt.timedelta(seconds=seconds_ago)
    return p


def test_a_running_pod_that_never_heartbeats_is_flagged_after_the_startup_allowance_if_the_job_heartbeats():
    t_ = D.Timeouts(heartbeat_s=30, progress_s=10, startup_s=60, interval_s=1)
    pods = [started(0, 100), started(1, 90)]
    ranks = [rp(0, step=-1, pod_name="j-worker-0-0")]   # rank 0 says hello; pod 1 never does
    f = D.detect(pods, {}, ranks, t_, 100.0, NOW, incarnation=0, nodes_listed=False, expect_heartbeats=True)
    assert f is not None and f.cause == D.HEARTBEAT_LOST and f.pod == "j-worker-1-0" and f.node == "n1"
    assert "no heartbeat in the 90s since every worker started" in f.message
    assert "startupTimeoutSeconds" in f.message
    assert f.onset == NOW - dt.timedelta(seconds=30)   # the allowance ended 30 s ago
    # within the allowance (counted from the last worker's start): nothing yet
    assert D.detect([started(0, 100), started(1, 50)], {}, ranks, t_, 100.0, NOW, incarnation=0,
                    nodes_listed=False, expect_heartbeats=True) is None
    # a job never known to heartbeat (a script without the SDK) is left alone
    assert D.detect(pods, {}, ranks, t_, 100.0, NOW, incarnation=0, nodes_listed=False) is None
    # a peer still waiting to be scheduled: the others wait for it in the rendezvous on purpose
    assert D.detect([started(0, 100), pod(1, phase="Pending", node=None)], {}, [], t_, 100.0, NOW, incarnation=0,
                    nodes_listed=False, expect_heartbeats=True) is None


def test_the_startup_allowance_is_set_per_job():
    from stoker.operator.jobspec import job_view
    spec = {"replicas": 1, "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}},
            "failurePolicy": {"startupTimeoutSeconds": 45}}
    job = job_view({"metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "spec": spec})
    from stoker.operator import supervision as S
    assert S.Settings(startup_timeout_s=600).timeouts(job).startup_s == 45
    job = job_view({"metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "spec": {**spec, "failurePolicy": {}}})
    assert S.Settings(startup_timeout_s=600).timeouts(job).startup_s == 600


def test_an_elastic_ranks_relaunch_is_given_the_startup_allowance_not_the_heartbeat_timeout():
    """When an elastic job's membership changes, torchrun restarts every trainer in its pod;
    new trainers that take longer than heartbeatTimeoutSeconds to import torch and send a
    first message would have a healthy survivor replaced (reasoned while chasing a CI flake
    that turned out to be a node-list race, test_recovery_shell; not seen in a run). A rank whose
    stream ended while its pod runs on, on the node it spoke from, is relaunching: silence
    and a still step are judged against startup_s. Fixed-size jobs (no in-place restarts),
    a rank still connected (SIGSTOP: the socket stays open) and a pod that is gone are not."""
    import dataclasses as dc
    ranks = [dc.replace(rp(0, last_seen=100, node_name="n1"), connected=False),
             rp(1, last_seen=140, advanced_at=100, node_name="n1")]
    pods = [pod(0), pod(1)]
    to = D.Timeouts(heartbeat_s=30, progress_s=10, startup_s=60, interval_s=1)

    def at(now, ranks=ranks, pods=pods, elastic=True):
        return D.detect(pods, {"n1": node(), "n9": node("n9")}, ranks, to, now, NOW, incarnation=0,
                        in_place_restarts=elastic)

    assert at(140.0) is None and at(159.0) is None                 # 40 s, 59 s of silence: relaunching
    f = at(161.0)
    assert (f.cause, f.rank) == (D.HEARTBEAT_LOST, 0) and "startup allowance 60s" in f.message
    assert at(140.0, elastic=False).cause == D.HEARTBEAT_LOST      # fixed size: torchrun does not relaunch
    still_open = [dc.replace(ranks[0], connected=True), ranks[1]]
    assert at(140.0, ranks=still_open).cause == D.HEARTBEAT_LOST   # SIGSTOPped: no allowance
    elsewhere = [pod(0, node="n9"), pod(1)]
    assert at(140.0, pods=elsewhere).cause == D.HEARTBEAT_LOST     # the pod it spoke from is gone


def test_a_rank_not_back_long_after_its_peers_restarted_in_place_is_stuck_in_its_start():
    """Chaos (seed 708224917): a trainer killed, then its peer's *new* trainer SIGSTOPped 0.6 s after
    the in-place restart started it, before its first message. It was relaunching, so silence was
    judged against startup_s (600 s) and the in-place deadline (120 s) ended it. In a fixed-size
    job's in-place restart every trainer starts in one rendezvous round: a rank not back
    relaunch_lag_s after a peer's new trainer spoke is stuck. Not for elastic jobs (ranks change
    hands), not while no peer is back, not when its pod speaks again under another rank."""
    import dataclasses as dc
    to = D.Timeouts(heartbeat_s=30, progress_s=10, startup_s=600, interval_s=1, relaunch_lag_s=30)
    gone = dc.replace(rp(1, last_seen=100, node_name="n1", phase="FAILED"), connected=False)
    back = dc.replace(rp(0, step=-1, last_seen=140, advanced_at=101, node_name="n1", phase="STARTING"),
                      started_at=101.0)
    pods = [pod(0), pod(1)]

    def at(now, ranks=(back, gone), together=True):
        return D.detect(pods, {"n1": node()}, list(ranks), to, now, NOW, incarnation=0, in_place_restarts=True,
                        together=together)

    assert at(130.0) is None                                          # 29 s after rank 0 spoke again
    f = at(132.0)
    assert (f.cause, f.rank, f.pod) == (D.HEARTBEAT_LOST, 1, "j-worker-1-0")
    assert "restarted in place with its peers" in f.message and "limit 30s" in f.message
    assert at(132.0, together=False) is None                          # elastic: startup_s
    past_it = dc.replace(back, phase="RESTORING")                    # it formed the group with rank 1 (a late Session)
    assert at(132.0, ranks=(past_it, gone)) is None
    old_peer = dc.replace(back, started_at=50.0)                      # rank 0's trainer is the one from before
    assert at(132.0, ranks=(old_peer, gone)) is None
    renumbered = dc.replace(gone, pod_name=back.pod_name)             # its pod speaks again as rank 0
    assert at(132.0, ranks=(back, renumbered)) is None


def beat(index, last_seen, incarnation=0):
    from stoker.common.launcher_beats import LauncherBeat
    return LauncherBeat("ns", "j", f"j-worker-{index}-{incarnation}", f"n{index}", incarnation, last_seen)


def test_a_launcher_gone_quiet_while_others_speak_is_frozen_and_named():
    """Chaos (seed 708224917): a pod's launcher SIGSTOPped; its trainer trained on, but the next
    in-place restart waited 120 s for it (InPlaceRestartTimedOut). Its keepalives stop: silent 2x the
    frozen allowance while messages keep arriving -> HeartbeatLost naming its pod. Once its pod's
    trainers all FINISHED only after LAUNCHER_EXIT_S (CI: a launcher stopped 2 s before the last step
    left its pod, and the job, Running for ever; a healthy one ends its pod), not when everything went
    quiet at once (an operator that itself stalled), nor for a pod that is not running."""
    to = D.Timeouts(heartbeat_s=30, progress_s=10, startup_s=60, interval_s=1)   # frozen after 3 s: 6 s here
    ranks = [rp(0, last_seen=110, advanced_at=110), rp(1, last_seen=110, advanced_at=110)]
    pods = [pod(0, node="n0"), pod(1, node="n1")]

    def at(now, launchers, pods=pods, newest=110.0):
        return D.detect(pods, {"n0": node("n0"), "n1": node("n1")}, ranks, to, now, NOW, incarnation=0,
                        in_place_restarts=True, together=True, newest_heard=newest, launchers=launchers)

    assert at(110.0, [beat(0, 110), beat(1, 104.5)]) is None             # 5.5 s: not yet
    f = at(110.0, [beat(0, 110), beat(1, 103.5)])
    assert (f.cause, f.pod, f.node) == (D.HEARTBEAT_LOST, "j-worker-1-0", "n1") and "launcher" in f.message
    done = [rp(0, last_seen=108, advanced_at=108, phase="FINISHED"),
            rp(1, last_seen=105, advanced_at=105, phase="FINISHED")]

    def finished(now, quiet_since):
        return D.detect(pods, {"n0": node("n0"), "n1": node("n1")}, done, to, now, NOW, incarnation=0,
                        newest_heard=now, launchers=[beat(0, now), beat(1, quiet_since)])
    assert finished(110.0, 100.0) is None and finished(129.5, 100.0) is None   # on its way out: 29.5 s
    f = finished(130.5, 100.0)
    assert (f.cause, f.pod) == (D.HEARTBEAT_LOST, "j-worker-1-0") and "frozen after 30s" in f.message, f
    assert at(110.0, [beat(0, 110), beat(1, 100)], pods=[pods[0], pod(1, node="n1", phase="Succeeded")]) is None
    quiet = [rp(0, last_seen=100, advanced_at=100), rp(1, last_seen=100, advanced_at=100)]
    assert D.detect(pods, {}, quiet, to, 110.0, NOW, incarnation=0, newest_heard=100.0, nodes_listed=False,
                    launchers=[beat(0, 100), beat(1, 100)]) is None      # nobody heard from: no blame


def test_every_trainer_of_a_job_stopped_is_frozen_while_its_launchers_speak_not_a_30_s_hang():
    """Chaos: both trainers SIGSTOPped -> caught after 31 s by the progress timeout's floor (Hang): with
    no live peer the frozen rule had no reference. The launchers' keepalives are messages heard."""
    to = D.Timeouts(heartbeat_s=30, progress_s=None, startup_s=60, interval_s=1)
    ranks = [rp(0, last_seen=100, advanced_at=100), rp(1, last_seen=100.5, advanced_at=100)]
    pods = [pod(0, node="n0"), pod(1, node="n1")]
    launchers = [beat(0, 104.0), beat(1, 104.0)]
    f = D.detect(pods, {"n0": node("n0"), "n1": node("n1")}, ranks, to, 104.0, NOW, incarnation=0,
                 newest_heard=104.0, launchers=launchers)
    assert (f.cause, f.rank) == (D.HEARTBEAT_LOST, 0) and "frozen" in f.message
    assert D.detect(pods, {"n0": node("n0"), "n1": node("n1")}, ranks, to, 104.0, NOW, incarnation=0,
                    newest_heard=100.5) is None                            # before: nothing to compare with


GLOO_READ_ERROR = ("[rank1]:     w.wait()\n[rank1]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/"
                   "transport/tcp/pair.cc:545] Read error [10.0.0.2]:41234: Connection reset by peer")


def test_a_peer_whose_node_died_unseen_is_infrastructure_and_its_node_the_suspect():
    """bench/chaos.py (seed 682991080, job chaos-4): a node was lost; before it turned
    NotReady the surviving rank exited 1 with a gloo read error, and the restart was
    charged to the user (WorkerCrashed). Now: PeerLost, infrastructure, the silent peer's
    node is the one replacements avoid; acted on once PEER_SETTLE_S passed."""
    pods = [pod(0, node="dying"), pod(1, node="n1", phase="Failed", exit_code=1, finished_ago=1,
                                       message=GLOO_READ_ERROR)]
    ranks = [rp(0, last_seen=90.0, pod_name="j-worker-0-0"), rp(1, last_seen=99.0, pod_name="j-worker-1-0")]
    nodes = {"dying": node("dying"), "n1": node("n1")}          # the dying node still reads Ready
    f = D.detect(pods, nodes, ranks, D.Timeouts(), 100.0, NOW, incarnation=0)
    assert (f.cause, f.budget, f.pod, f.node) == (D.PEER_LOST, "infrastructure", "j-worker-1-0", "dying")
    assert f.settle_s == pytest.approx(PEER_SETTLE_S - 1) and "suspect: j-worker-0-0 on node dying" in f.message
    later = D.detect([pods[0], pod(1, node="n1", phase="Failed", exit_code=1, finished_ago=6, message=GLOO_READ_ERROR)],
                     nodes, ranks, D.Timeouts(), 100.0, NOW, incarnation=0)
    assert later.cause == D.PEER_LOST and later.settle_s == 0


def test_a_peers_own_failure_is_the_root_even_when_it_ended_after_the_echo():
    pods = [pod(0, phase="Failed", exit_code=1, finished_ago=3, message=GLOO_READ_ERROR),
            pod(1, phase="Failed", exit_code=1, finished_ago=2, message="ValueError: loss is NaN at step 3")]
    f = D.detect(pods, {"n1": node()}, [], D.Timeouts(), 100.0, NOW, incarnation=0)
    assert (f.cause, f.pod, f.budget, f.settle_s) == (D.WORKER_CRASHED, "j-worker-1-0", "userError", 0.0)



def test_frozen_is_measured_against_the_newest_heartbeat_anywhere_not_the_wall_clock():
    # 2.5 s of silence: not yet (3 intervals of 1 s)
    assert D.check_heartbeats([rp(0, last_seen=104), rp(1, last_seen=101.5)], TO, 104.0, NOW) is None
    # the operator itself stalled 8 s: nobody was heard since, nobody is frozen
    assert D.check_heartbeats([rp(0, last_seen=100), rp(1, last_seen=100)], TO, 108.0, NOW,
                              newest_heard=100.0) is None
    # a one-rank job goes silent while another job's workers keep beating: frozen
    f = D.check_heartbeats([rp(0, last_seen=100)], TO, 104.0, NOW, newest_heard=104.0)
    assert (f.cause, f.rank) == (D.HEARTBEAT_LOST, 0) and f.onset == NOW - dt.timedelta(seconds=4)
    # a rank that is restarting in place (its stream ended) has the startup allowance instead
    assert D.check_heartbeats([rp(0, last_seen=110), rp(1, last_seen=100)], TO, 110.0, NOW,
                              relaunching=frozenset({1})) is None


def test_a_notready_node_whose_pods_still_beat_is_not_lost_until_they_go_quiet():
    """Real nodes (test_spares_real, 2026-12-06): the apiserver stalled ~15 s under load, every kubelet
    missed its lease and the nodes turned Ready=Unknown with the unreachable taint while their trainers
    trained on and heartbeated. The node rule acted on one of them and replaced a healthy worker. A pod
    whose every rank (or, with none, its launcher) still beats is alive whatever its node's status says;
    once they go quiet it is lost as before, and a deleted Node is still lost at once."""
    down = node("n1", ready="Unknown", taints=(D.UNREACHABLE_TAINT,), beat_ago=12)
    nodes = {"n1": down, "n2": node("n2")}
    pods = [pod(0, node="n1"), pod(1, node="n2")]

    def at(now, ranks, launchers=(), n=nodes):
        return D.detect(pods, n, ranks, TO, now, NOW, incarnation=0, launchers=launchers)
    beating = [rp(0, last_seen=100.0, node_name="n1"), rp(1, last_seen=100.0, node_name="n2")]
    assert at(100.5, beating) is None
    quiet = [rp(0, last_seen=97.0, node_name="n1"), rp(1, last_seen=100.0, node_name="n2")]
    f = at(100.5, quiet)
    assert f.cause == D.NODE_LOST and f.pod == "j-worker-0-0" and "unreachable" in f.message
    f = at(100.5, beating, n={"n2": node("n2")})   # the Node object deleted: lost whatever the pod says
    assert f.cause == D.NODE_LOST and "was deleted" in f.message
    # a pod with no rank yet (a spare, a trainer still starting): its launcher's keepalive says it is alive
    only_one = [rp(1, last_seen=100.0, node_name="n2")]
    assert at(100.5, only_one, launchers=[beat(0, 99.5), beat(1, 100.0)]) is None
    assert at(100.5, only_one, launchers=[beat(0, 96.0), beat(1, 100.0)]).cause == D.NODE_LOST
    assert at(100.5, only_one).cause == D.NODE_LOST
