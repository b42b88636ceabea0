"""In-place restarts (issue 12), the operator's pure part: a launcher's report of a trainer it
restarts inside its pod becomes an incident of the same incarnation, spends the budget its cause
spends, is counted once per fault, and gives way to a new incarnation when it does not train again."""
from __future__ import annotations

import dataclasses
import datetime as dt

from stoker.common.heartbeat_server import LauncherReport
from stoker.operator import policy_inplace as P
from stoker.operator import supervision as S
from stoker.operator.jobspec import job_view
from stoker.operator.reconcile import plan
from stoker.operator.status import fmt_time
from tests.operator_tests.helpers import NOW, job_body, observed

GLOO = "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"


def report(pod="demo-worker-1-0", rank=1, exit_code=137, restart=1, at=NOW, error="", step=41, incarnation=0):
    t = at.timestamp()
    return LauncherReport("ns", "demo", incarnation, rank, pod, "n1", exit_code, step, error, t - 0.3, restart,
                          3 - restart, t)


def running(incarnation=0, incidents=(), restarts=None, **fp):
    st = {"phase": "Running", "incarnation": incarnation, "startTime": fmt_time(NOW - dt.timedelta(minutes=1)),
          "conditions": [{"type": "Created", "status": "True", "reason": "JobCreated", "message": "",
                          "lastTransitionTime": fmt_time(NOW)}],
          "restarts": restarts or {"userError": 0, "infrastructure": 0, "preemption": 0, "total": 0},
          "incidents": list(incidents)}
    return job_body(status=st, failurePolicy={"maxRestarts": 3, "backoffSeconds": 0, **fp})


def pods(body, incarnation=0):
    return [dataclasses.replace(observed(body, i, incarnation), node="n1") for i in range(2)]


def run(body, reports, now=NOW, settings=None):
    ps = pods(body)
    obs = S.Observed(facts=tuple(ps), nodes={}, nodes_listed=False, reports=tuple(reports), heartbeats=True,
                     mono_now=1000.0)
    return plan(job_view(body), ps, now, obs, settings)


def test_a_killed_trainer_restarted_in_place_is_an_incident_of_the_same_incarnation_and_keeps_the_pods():
    p = run(running(), [report()])
    [inc] = p.status["incidents"]
    assert inc["kind"] == "Restart" and inc["inPlace"] is True and inc["workerRestarts"] == ["demo-worker-1-0#1"]
    assert inc["detectedCause"] == "WorkerKilled" and inc["cause"] == "infrastructure" and inc["exitCode"] == 137
    assert inc["pod"] == "demo-worker-1-0" and inc["step"] == 41 and inc["incarnation"] == 0
    assert inc["detectionLatencySeconds"] >= 0.3
    assert p.status["incarnation"] == 0 and p.delete == [] and p.create == []
    assert p.status["restarts"] == {"userError": 0, "infrastructure": 1, "preemption": 0, "total": 1}
    assert p.status["phase"] == "Running"
    assert any(e.reason == "WorkerKilled" and "in place" in e.message for e in p.events)


def test_a_report_is_counted_once_and_the_survivors_broken_collective_joins_the_same_incident():
    first = run(running(), [report()])
    body = running(incidents=first.status["incidents"], restarts=first.status["restarts"])
    survivor = report(pod="demo-worker-0-0", rank=0, exit_code=1, error=GLOO, at=NOW + dt.timedelta(seconds=1))
    again = run(body, [report(), survivor], now=NOW + dt.timedelta(seconds=1))
    [inc] = again.status["incidents"]
    assert inc["workerRestarts"] == ["demo-worker-1-0#1", "demo-worker-0-0#1"]
    assert again.status["restarts"]["total"] == 1 and again.events == []


def test_the_killed_trainer_is_the_root_cause_when_both_reports_come_at_once():
    survivor = report(pod="demo-worker-0-0", rank=0, exit_code=1, error=GLOO)
    [inc] = run(running(), [survivor, report()]).status["incidents"]
    assert inc["detectedCause"] == "WorkerKilled" and inc["pod"] == "demo-worker-1-0"
    assert sorted(inc["workerRestarts"]) == ["demo-worker-0-0#1", "demo-worker-1-0#1"]


def test_a_broken_collective_alone_waits_for_its_peers_report():
    survivor = report(pod="demo-worker-0-0", rank=0, exit_code=1, error=GLOO)
    p = run(running(), [survivor])
    assert not p.status.get("incidents") and 0 < p.requeue_after <= 5


def test_the_same_pod_failing_again_is_a_new_failure_even_before_it_recovered():
    first = run(running(), [report()])
    body = running(incidents=first.status["incidents"], restarts=first.status["restarts"])
    later = NOW + dt.timedelta(seconds=20)
    p = run(body, [report(), report(restart=2, at=later)], now=later)
    assert [i["workerRestarts"] for i in p.status["incidents"]] == [["demo-worker-1-0#1"], ["demo-worker-1-0#2"]]
    assert p.status["restarts"]["infrastructure"] == 2 and p.status["incarnation"] == 0


def test_a_crash_spends_the_user_budget_and_fails_the_job_when_it_is_spent():
    spent = {"userError": 3, "infrastructure": 0, "preemption": 0, "total": 3}
    ok = run(running(), [report(exit_code=1, error="ValueError: bad batch")])
    assert ok.status["restarts"]["userError"] == 1 and ok.status["incidents"][0]["detectedCause"] == "WorkerCrashed"
    p = run(running(restarts=spent), [report(exit_code=1, error="ValueError: bad batch")])
    assert p.status["phase"] == "Failed" and p.status["reason"] == "RestartLimitExceeded"
    assert sorted(p.delete) == ["demo-worker-0-0", "demo-worker-1-0"]


def test_reports_of_an_earlier_incarnation_or_a_gone_pod_are_not_counted():
    p = run(running(incarnation=1), [report(incarnation=0)])
    assert not p.status.get("incidents")
    p = run(running(), [report(pod="demo-worker-7-0")])
    assert not p.status.get("incidents")


def test_an_in_place_restart_closes_when_training_advances_in_the_same_incarnation():
    from stoker.operator import incidents as I

    first = run(running(), [report()])
    closed = I.mark_recovered(first.status["incidents"], now=NOW + dt.timedelta(seconds=4), incarnation=0,
                              training=True)
    assert closed[0]["timeToRecoverSeconds"] == 4.0


def test_an_in_place_restart_that_does_not_train_again_in_time_restarts_the_job_as_a_new_incarnation():
    first = run(running(), [report()])
    body = running(incidents=first.status["incidents"], restarts=first.status["restarts"])
    waiting = run(body, [report()], now=NOW + dt.timedelta(seconds=60))
    assert waiting.status["incarnation"] == 0 and 59 < waiting.requeue_after <= 60
    late = run(body, [report()], now=NOW + dt.timedelta(seconds=121))
    assert late.status["incarnation"] == 1 and late.status["phase"] == "Restarting"
    last = late.status["incidents"][-1]
    assert last["kind"] == "Restart" and last["detectedCause"] == P.IN_PLACE_TIMEOUT and last["cause"] == "none"
    assert late.status["restarts"] == {"userError": 0, "infrastructure": 1, "preemption": 0, "total": 2}


def test_a_peers_broken_collective_joins_the_open_incident_even_after_the_settle_window():
    first = run(running(), [report()])
    body = running(incidents=first.status["incidents"], restarts=first.status["restarts"])
    late = NOW + dt.timedelta(seconds=9)   # a loaded machine: the survivor's gloo error came late
    survivor = report(pod="demo-worker-0-0", rank=0, exit_code=1, error=GLOO, at=late)
    [inc] = run(body, [report(), survivor], now=late).status["incidents"]
    assert inc["workerRestarts"] == ["demo-worker-1-0#1", "demo-worker-0-0#1"]
    crash = report(pod="demo-worker-0-0", rank=0, exit_code=1, error="ValueError: bad batch", at=late)
    assert len(run(body, [report(), crash], now=late).status["incidents"]) == 2   # its own failure


def test_a_peers_report_that_arrives_after_the_restart_recovered_joins_it_if_its_failure_came_before():
    """CI (rendezvous cache shortened): one SIGKILL counted as two in-place restarts. The survivor's
    launcher sends its report while it restarts; a fast recovery can complete a step first."""
    from stoker.operator import incidents as I

    first = run(running(), [report()])
    recovered = I.mark_recovered(first.status["incidents"], now=NOW + dt.timedelta(seconds=1.5), incarnation=0,
                                 training=True)
    body = running(incidents=recovered, restarts=first.status["restarts"])
    arrived = NOW + dt.timedelta(seconds=2.5)
    late = dataclasses.replace(report(pod="demo-worker-0-0", rank=0, exit_code=1, at=arrived),
                               failed_at=(NOW + dt.timedelta(seconds=0.2)).timestamp())
    p = run(body, [report(), late], now=arrived)
    [inc] = p.status["incidents"]
    assert inc["workerRestarts"] == ["demo-worker-1-0#1", "demo-worker-0-0#1"]
    assert p.status["restarts"]["total"] == 1 and p.events == []
    # a failure after the job trained again is a new one
    after = report(pod="demo-worker-0-0", rank=0, exit_code=137, at=NOW + dt.timedelta(seconds=3))
    p = run(body, [report(), after], now=NOW + dt.timedelta(seconds=3))
    assert len(p.status["incidents"]) == 2 and p.status["restarts"]["total"] == 2


def _rank(rank, *, started_at, advanced_at, step=42):
    from stoker.operator.detection import RankProgress
    return RankProgress(rank=rank, incarnation=0, step=step, last_seen=advanced_at, advanced_at=advanced_at,
                        pod_name=f"demo-worker-{rank}-0", step_times=(0.1,), started_at=started_at)


def test_a_survivor_finishing_the_step_it_was_in_does_not_close_an_in_place_restart_a_restarted_trainer_does():
    """Seen in make demo: the survivor's in-flight step completed 0.4 s after the kill, closed the
    incident (timeToRecover 0.66 s), and its own broken collective a moment later became a second
    incident and a second restart."""
    first = run(running(), [report()])   # detected at NOW (mono 1000), onset 0.3 s before
    st = running(incidents=first.status["incidents"], restarts=first.status["restarts"])["status"]
    now = NOW + dt.timedelta(seconds=2)

    def closes(*ranks):
        obs = S.Observed(facts=(), nodes={}, nodes_listed=False, ranks=ranks, heartbeats=True, mono_now=1002.0)
        return "incidents" in S.progress(st, obs, incarnation=0, checkpoint_uri=None, now=now)

    survivor = _rank(0, started_at=10.0, advanced_at=1000.4)          # its process predates the failure
    assert not closes(survivor)
    assert closes(survivor, _rank(1, started_at=1000.5, advanced_at=1001.5))   # restarted, then a step
    assert not closes(_rank(1, started_at=1000.5, advanced_at=1000.5))          # restarted, no step yet
