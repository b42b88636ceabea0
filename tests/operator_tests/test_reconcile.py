"""The reconcile pass as a specification: (job, observed pods, now) -> plan."""
from __future__ import annotations

import datetime as dt

from stoker.operator.jobspec import job_view
from stoker.operator.reconcile import plan
from stoker.operator.status import fmt_time

from .helpers import NOW, job_body, observed


def run(body, pods=(), now=NOW):
    return plan(job_view(body), list(pods), now)


def advance(body, p):
    """Apply a plan's status to the body, as the API server would."""
    body = dict(body)
    body["status"] = p.status
    return body


def running_status(incarnation=0, **extra):
    st = {"phase": "Running", "incarnation": incarnation, "startTime": fmt_time(NOW - dt.timedelta(minutes=1)),
          "desiredReplicas": 2, "conditions": [{"type": "Created", "status": "True", "reason": "JobCreated",
                                                "message": "", "lastTransitionTime": fmt_time(NOW)}],
          "restarts": {"userError": 0, "infrastructure": 0, "preemption": 0, "total": 0}}
    st.update(extra)
    return st


def test_new_job_creates_every_worker_and_is_created():
    p = run(job_body(replicas=3))
    assert p.create == [0, 1, 2] and p.incarnation == 0
    assert p.status["phase"] == "Created"
    assert p.status["startTime"] == fmt_time(NOW)
    assert p.status["workers"] == "0/3" and p.status["selector"] == "stoker.dev/job-name=demo"
    assert [e.reason for e in p.events] == ["JobCreated"]


def test_existing_pods_are_not_created_again_and_ready_workers_mean_running():
    body = job_body(status=running_status(phase="Created"))
    p = run(body, [observed(body, 0), observed(body, 1)])
    assert p.create == [] and p.delete == []
    assert p.status["phase"] == "Running" and p.status["readyReplicas"] == 2
    assert any(e.reason == "Running" for e in p.events)


def test_a_steady_running_job_plans_nothing_and_emits_no_events():
    body = job_body(status=running_status())
    first = run(body, [observed(body, 0), observed(body, 1)])
    again = run(advance(body, first), [observed(body, 0), observed(body, 1)])
    assert again.create == [] and again.delete == [] and again.events == []
    assert again.status == first.status


def test_a_missing_worker_is_recreated_under_the_same_name():
    body = job_body(status=running_status())
    p = run(body, [observed(body, 0)])
    assert p.create == [1]


def test_a_terminating_pod_is_not_recreated_until_it_is_gone():
    body = job_body(status=running_status())
    p = run(body, [observed(body, 0), observed(body, 1, deleting=True)])
    assert p.create == []


def test_scale_up_creates_new_indexes_and_scale_down_deletes_the_highest():
    body = job_body(replicas=3, maxReplicas=4, status=running_status())
    p = run(body, [observed(body, 0), observed(body, 1)])
    assert p.create == [2] and any(e.reason == "ScaledUp" for e in p.events)
    body = job_body(replicas=1, maxReplicas=4, status=running_status(desiredReplicas=3))
    p = run(body, [observed(body, 0), observed(body, 1), observed(body, 2)])
    assert p.delete == ["demo-worker-1-0", "demo-worker-2-0"] and p.create == []
    assert any(e.reason == "ScaledDown" for e in p.events)


def test_a_scaled_away_worker_that_exits_nonzero_is_not_a_failure():
    body = job_body(replicas=1, maxReplicas=3, status=running_status())
    p = run(body, [observed(body, 0), observed(body, 1, phase="Failed", exit_code=143)])
    assert p.status["phase"] == "Running" and p.status["incarnation"] == 0
    assert p.delete == ["demo-worker-1-0"]


def test_a_failed_worker_restarts_the_job_status_first_then_replaces_pods():
    body = job_body(status=running_status())
    pods = [observed(body, 0), observed(body, 1, phase="Failed", exit_code=1)]
    p = run(body, pods)
    # pass 1: only the decision is written
    assert p.create == [] and p.delete == []
    assert p.status["phase"] == "Restarting" and p.status["incarnation"] == 1
    assert p.status["restarts"] == {"userError": 1, "infrastructure": 0, "preemption": 0, "total": 1}
    assert p.status["incidents"][-1]["pod"] == "demo-worker-1-0"
    assert p.restart_cause == "userError"
    # pass 2: the previous incarnation goes, the new one is created
    p2 = run(advance(body, p), pods)
    assert p2.delete == ["demo-worker-0-0", "demo-worker-1-0"]
    assert p2.create == [0, 1] and p2.incarnation == 1
    assert p2.status["restarts"]["total"] == 1  # not counted twice


def test_the_restart_decision_is_repeatable_after_a_crash_before_the_status_write():
    body = job_body(status=running_status())
    pods = [observed(body, 0), observed(body, 1, phase="Failed", exit_code=1)]
    assert run(body, pods).status == run(body, pods).status


def test_restart_waits_for_the_backoff():
    body = job_body(status=running_status(), failurePolicy={"backoffSeconds": 30})
    p = run(body, [observed(body, 0, phase="Failed", exit_code=1)])
    soon = run(advance(body, p), [], now=NOW + dt.timedelta(seconds=10))
    assert soon.create == [] and 19 <= soon.requeue_after <= 20
    later = run(advance(body, p), [], now=NOW + dt.timedelta(seconds=31))
    assert later.create == [0, 1]


def test_the_restart_budget_is_spent_then_the_job_fails_with_a_reason():
    # Only user errors spend failurePolicy.maxRestarts (infrastructure and preemption are free).
    st = running_status(restarts={"userError": 3, "infrastructure": 4, "preemption": 5, "total": 12})
    body = job_body(status=st)
    p = run(body, [observed(body, 0), observed(body, 1, phase="Failed", exit_code=1)])
    assert p.status["phase"] == "Failed" and p.status["reason"] == "RestartLimitExceeded"
    assert "maxRestarts=3" in p.status["message"]
    assert p.status["completionTime"] == fmt_time(NOW)
    assert "demo-worker-0-0" in p.delete  # cleanPodPolicy Running deletes the still-running worker
    conds = {c["type"]: c["status"] for c in p.status["conditions"]}
    assert conds["Failed"] == "True" and conds["Running"] == "False"


def test_infrastructure_failures_restart_without_spending_the_budget():
    st = running_status(restarts={"userError": 3, "infrastructure": 0, "preemption": 0, "total": 3})
    body = job_body(status=st)
    p = run(body, [observed(body, 0), observed(body, 1, phase="Failed", exit_code=137)])
    assert p.status["phase"] == "Restarting" and p.status["reason"] == "WorkerKilled"
    assert p.status["restarts"] == {"userError": 3, "infrastructure": 1, "preemption": 0, "total": 4}
    assert p.status["incidents"][-1]["detectedCause"] == "WorkerKilled"


def test_preemption_restarts_without_spending_the_budget():
    st = running_status(restarts={"userError": 3, "infrastructure": 0, "preemption": 0, "total": 3})
    body = job_body(status=st)
    p = run(body, [observed(body, 0, phase="Failed", disruption="PreemptionByScheduler")])
    assert p.status["phase"] == "Restarting"
    assert p.status["restarts"]["preemption"] == 1 and p.status["restarts"]["userError"] == 3


def test_exit_code_rule_failjob_fails_at_once():
    body = job_body(status=running_status(),
                    failurePolicy={"exitCodeRules": [{"exitCodes": [42], "action": "FailJob"}]})
    p = run(body, [observed(body, 0), observed(body, 1, phase="Failed", exit_code=42)])
    assert p.status["phase"] == "Failed" and p.status["reason"] == "ExitCodeRule"
    assert "exit code 42" in p.status["message"]


def test_exit_code_rule_ignore_restarts_for_free():
    st = running_status(restarts={"userError": 3, "infrastructure": 0, "preemption": 0, "total": 3})
    body = job_body(status=st, failurePolicy={"exitCodeRules": [{"exitCodes": [7], "action": "Ignore"}]})
    p = run(body, [observed(body, 0, phase="Failed", exit_code=7)])
    assert p.status["phase"] == "Restarting" and p.status["restarts"]["userError"] == 3


def test_one_worker_exiting_zero_is_not_success_until_all_have():
    body = job_body(status=running_status())
    p = run(body, [observed(body, 0, phase="Succeeded", exit_code=0), observed(body, 1)])
    assert p.status["phase"] == "Running" and p.create == []
    p = run(body, [observed(body, 0, phase="Succeeded", exit_code=0),
                   observed(body, 1, phase="Succeeded", exit_code=0)])
    assert p.status["phase"] == "Succeeded" and p.status["reason"] == "AllWorkersSucceeded"
    assert p.delete == []


def test_no_replacements_once_a_worker_succeeded():
    body = job_body(replicas=3, maxReplicas=3, status=running_status())
    p = run(body, [observed(body, 0, phase="Succeeded", exit_code=0), observed(body, 1)])
    assert p.create == []


def test_finished_job_stays_finished_and_never_restarting():
    st = running_status(phase="Succeeded", completionTime=fmt_time(NOW))
    body = job_body(status=st)
    p = run(body, [observed(body, 0, phase="Failed", exit_code=1)])
    assert p.status["phase"] == "Succeeded" and p.create == [] and p.status["incarnation"] == 0


def test_suspend_deletes_pods_keeps_the_job_and_resume_is_a_new_incarnation():
    body = job_body(status=running_status(), runPolicy={"suspend": True})
    pods = [observed(body, 0), observed(body, 1)]
    p = run(body, pods)
    assert p.status["phase"] == "Suspended" and sorted(p.delete) == ["demo-worker-0-0", "demo-worker-1-0"]
    assert "startTime" not in p.status and p.status["desiredReplicas"] == 0
    body = job_body(status=p.status, runPolicy={"suspend": False})
    r = run(body, [])
    assert r.status["phase"] == "Restarting" and r.status["incarnation"] == 1 and r.create == []
    assert r.status["restarts"]["total"] == 0
    r2 = run(advance(body, r), [])
    assert r2.create == [0, 1] and r2.incarnation == 1 and r2.status["startTime"] == fmt_time(NOW)


def test_deadline_exceeded_fails_the_job():
    st = running_status(startTime=fmt_time(NOW - dt.timedelta(seconds=61)))
    body = job_body(status=st, runPolicy={"activeDeadlineSeconds": 60})
    p = run(body, [observed(body, 0), observed(body, 1)])
    assert p.status["phase"] == "Failed" and p.status["reason"] == "DeadlineExceeded"
    assert len(p.delete) == 2
    early = run(job_body(status=running_status(startTime=fmt_time(NOW - dt.timedelta(seconds=50))),
                         runPolicy={"activeDeadlineSeconds": 60}), [])
    assert early.status["phase"] != "Failed" and early.requeue_after == 10


def test_ttl_deletes_the_job_after_it_finished():
    st = running_status(phase="Succeeded", completionTime=fmt_time(NOW - dt.timedelta(seconds=5)))
    assert not run(job_body(status=st, runPolicy={"ttlSecondsAfterFinished": 10})).delete_job
    assert run(job_body(status=st, runPolicy={"ttlSecondsAfterFinished": 4})).delete_job


def test_previous_incarnation_pods_are_deleted():
    body = job_body(status=running_status(incarnation=2))
    p = run(body, [observed(body, 0, incarnation=1), observed(body, 0, incarnation=2), observed(body, 1, incarnation=2)])
    assert p.delete == ["demo-worker-0-1"] and p.create == []


def test_template_change_restarts_without_spending_the_budget():
    body = job_body(status=running_status())
    p = run(body, [observed(body, 0, stale_hash=True), observed(body, 1, stale_hash=True)])
    assert p.status["reason"] == "SpecChanged" and p.status["incarnation"] == 1
    assert p.status["restarts"]["total"] == 0


def test_deleting_job_does_nothing():
    body = job_body()
    body["metadata"]["deletionTimestamp"] = fmt_time(NOW)
    p = run(body)
    assert p.create == [] and p.delete == [] and p.status == {}


def test_pods_owned_by_another_uid_are_left_alone():
    body = job_body(status=running_status())
    other = job_body()
    other["metadata"]["uid"] = "someone-else"
    p = run(body, [observed(other, 0), observed(body, 1)])
    assert p.create == [0] and p.delete == []


def test_conditions_keep_their_transition_time_when_status_does_not_flip():
    body = job_body(status=running_status(phase="Created"))
    p = run(body, [observed(body, 0), observed(body, 1)])
    later = NOW + dt.timedelta(minutes=5)
    p2 = plan(job_view(advance(body, p)), [observed(body, 0), observed(body, 1)], later)
    running = [c for c in p2.status["conditions"] if c["type"] == "Running"][0]
    assert running["lastTransitionTime"] == fmt_time(NOW)


def test_losing_the_rendezvous_store_restarts_without_spending_the_budget():
    st = running_status(restarts={"userError": 3, "infrastructure": 0, "preemption": 0, "total": 3})
    body = job_body(status=st)
    p = run(body, [observed(body, 0, phase="Failed", exit_code=86), observed(body, 1)])
    # counted as infrastructure, which never spends failurePolicy.maxRestarts (userError stays 3)
    assert p.status["phase"] == "Restarting" and p.status["restarts"]["userError"] == 3
    assert p.status["restarts"]["infrastructure"] == 1 and p.status["reason"] == "RendezvousLost"
    assert p.status["restarts"]["total"] == 4


def test_a_rank_that_failed_on_a_broken_collective_waits_for_its_peers_cause_then_restarts_as_infrastructure():
    """PeerLost (a gloo read error, its peer's node died unseen) is not acted on until
    PEER_SETTLE_S after it: the pass asks to look again, then restarts on the
    infrastructure budget (bench/chaos.py charged it to the user before)."""
    from stoker.operator.peer_errors import PEER_SETTLE_S

    gloo = "RuntimeError: [../gloo/transport/tcp/pair.cc:545] Read error [10.0.0.2]:41234: Connection reset by peer"
    body = job_body(status=running_status())

    def echo(ago: float):
        return observed(body, 1, phase="Failed", exit_code=1, message=gloo,
                        finished_at=fmt_time(NOW - dt.timedelta(seconds=ago)))

    early = run(body, [observed(body, 0), echo(1)])
    assert early.status["phase"] == "Running" and early.status["incarnation"] == 0
    assert early.requeue_after is not None and early.requeue_after <= PEER_SETTLE_S - 1 + 0.01
    late = run(body, [observed(body, 0), echo(PEER_SETTLE_S + 1)])
    assert late.status["phase"] == "Restarting" and late.restart_cause == "infrastructure"
    assert late.status["restarts"]["userError"] == 0 and late.status["incidents"][-1]["detectedCause"] == "PeerLost"



def test_a_training_paused_by_spec_health_holds_without_pods_until_a_restart_request_resumes_it():
    """Exit 88 (health Pause): phase Suspended, reason TrainingPaused, pods deleted, an incident of kind Paused,
    no budget spent; later passes create nothing; a restart request resumes as the next incarnation, once."""
    from stoker.common import labels as L

    body = job_body(status=running_status())
    stopped = observed(body, 1, phase="Failed", exit_code=88, message="training paused: NonFinite at step 5")
    paused = run(body, [observed(body, 0), stopped])
    st = paused.status
    assert (st["phase"], st["reason"]) == ("Suspended", "TrainingPaused")
    assert "kubectl stoker resume demo" in st["message"]
    assert paused.delete == ["demo-worker-0-0"] and paused.create == []  # the paused one stays for its logs
    assert st["incidents"][-1]["kind"] == "Paused" and st["restarts"]["total"] == 0
    assert [e.reason for e in paused.events] == ["TrainingPaused"]

    body = advance(body, paused)
    held = run(body, [observed(body, 1, phase="Failed", exit_code=88)])
    assert held.create == [] and held.delete == []
    assert held.status["phase"] == "Suspended" and held.status["incarnation"] == 0

    body["metadata"]["annotations"] = {L.RESTART_REQUEST: "r1"}
    resumed = run(body, [observed(body, 1, phase="Failed", exit_code=88)])
    assert resumed.status["phase"] == "Restarting" and resumed.status["incarnation"] == 1
    assert resumed.annotate == {L.RESTART_REQUEST_HANDLED: "r1"}
    body = advance(body, resumed)
    body["metadata"]["annotations"][L.RESTART_REQUEST_HANDLED] = "r1"
    after = run(body)
    assert after.create == [0, 1] and after.status["incarnation"] == 1  # the request was taken once


def test_a_paused_job_that_is_then_suspended_resumes_by_its_spec_like_any_suspended_job():
    body = job_body(status=running_status())
    paused = run(body, [observed(body, 0, phase="Failed", exit_code=88), observed(body, 1)])
    body = advance(body, paused)
    body["spec"]["runPolicy"]["suspend"] = True
    suspended = run(body)
    assert (suspended.status["phase"], suspended.status["reason"]) == ("Suspended", "JobSuspended")
    body = advance(body, suspended)
    body["spec"]["runPolicy"]["suspend"] = False
    resumed = run(body)
    assert resumed.status["phase"] == "Restarting" and resumed.status["incarnation"] == 1
