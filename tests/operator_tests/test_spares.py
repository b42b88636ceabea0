"""Hot spares (spec.spares, issue 12), the operator's pure part: the pods a job runs, the rendezvous
keep-alive its launchers get, which failures a spare covers, a spare's silence, and the next spare
started only once the job trains again. The takeover itself is tests/recovery_tests/test_e2e_spares.py."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from stoker.operator import detection as D
from stoker.operator import recovery as R
from stoker.operator.heartbeat_checks import never_heard
from stoker.operator.jobspec import job_view
from stoker.operator.pods import RenderConfig, render_pod
from stoker.operator.reconcile import plan
from stoker.operator.status import fmt_time

from .helpers import NOW, job_body, observed
from .test_reconcile import advance, running_status

NO_RESTARTS = {"userError": 0, "infrastructure": 0, "preemption": 0, "total": 0}
SPARE_POLICY = R.Policy(in_place=True, replicas=2, spares=1, min_replicas=2)


def spare_job(**extra):
    return job_body(replicas=2, spares=1, **extra)


def test_a_job_with_spares_runs_its_replicas_and_its_spares():
    p = plan(job_view(spare_job()), [], NOW)
    assert p.create == [0, 1, 2] and p.status["workers"] == "0/3"
    assert job_view(spare_job()).pods == 3
    # an elastic job takes no spares (the CRD refuses it; the operator ignores it too)
    assert job_view(job_body(replicas=2, minReplicas=1, maxReplicas=3, spares=1)).pods == 2


def keep_alive_conf(body):
    trainer = render_pod(job_view(body), 0, 0, RenderConfig())["spec"]["containers"][0]
    conf = next(a for a in trainer["command"] if a.startswith("--rdzv-conf="))
    return {k: v for k, v in (kv.split("=") for kv in conf.split("=", 1)[1].split(","))}


def test_only_a_job_with_spares_shortens_the_rendezvous_keep_alive():
    assert keep_alive_conf(spare_job())["keep_alive_interval"] == "1"
    assert keep_alive_conf(spare_job())["keep_alive_max_attempt"] == "3"
    assert "keep_alive_interval" not in keep_alive_conf(job_body(replicas=2))


def finding(cause=D.NODE_LOST):
    return D.Finding(cause, f"{cause} happened", pod="demo-worker-1-0", rank=1, node="n1", step=7)


@pytest.mark.parametrize("cause", [D.NODE_LOST, D.WORKER_KILLED, D.EVICTED, D.HANG, D.HEARTBEAT_LOST])
def test_a_spare_takes_the_place_of_a_pod_lost_for_a_cause_that_is_not_the_users(cause):
    a = R.decide(finding(cause), NO_RESTARTS, [], SPARE_POLICY, failed_pods=["demo-worker-1-0"], survivors=2)
    assert isinstance(a, R.Replace) and a.spare and a.pods == ("demo-worker-1-0",)
    assert "a hot spare takes the place of demo-worker-1-0" in a.message


def test_no_spare_for_a_user_error_or_when_too_few_pods_are_left():
    crash = R.decide(finding(D.WORKER_CRASHED), NO_RESTARTS, [], SPARE_POLICY,
                     failed_pods=["demo-worker-1-0"], survivors=2)
    assert isinstance(crash, R.Restart)   # the same bug would meet the spare: restart (in place)
    two_lost = R.decide(finding(), NO_RESTARTS, [], SPARE_POLICY,
                        failed_pods=["demo-worker-0-0", "demo-worker-1-0"], survivors=1)
    assert isinstance(two_lost, R.Restart)   # one spare cannot make the world of 2
    no_spares = R.decide(finding(), NO_RESTARTS, [], R.Policy(in_place=True, replicas=2),
                         failed_pods=["demo-worker-1-0"], survivors=1)
    assert isinstance(no_spares, R.Restart)


def test_a_spare_is_not_a_silent_worker():
    body = spare_job()
    started = NOW - dt.timedelta(minutes=10)
    pods = [observed(body, i) for i in range(3)]
    pods = [dataclasses.replace(p, started_at=started) for p in pods]
    heard = [D.RankProgress(rank=r, incarnation=0, step=5, last_seen=0.0, advanced_at=0.0,
                            pod_name=f"demo-worker-{r}-0", node_name="n") for r in (0, 1)]
    t = D.Timeouts(startup_s=60)
    assert never_heard(pods, heard, t, NOW, spares=1) is None
    f = never_heard(pods, heard, t, NOW, spares=0)
    assert f is not None and f.pod == "demo-worker-2-0"
    assert never_heard(pods, heard[:1], t, NOW, spares=1) is not None   # two silent, one spare


def test_a_lost_worker_is_replaced_by_the_spare_and_the_next_spare_waits_until_the_job_trains_again():
    body = spare_job(status=running_status(desiredReplicas=3))
    pods = [observed(body, 0), observed(body, 1, phase="Failed", exit_code=137), observed(body, 2)]
    p = plan(job_view(body), pods, NOW)
    inc = p.status["incidents"][-1]
    assert (inc["kind"], inc["spare"], inc["inPlace"], inc["pod"]) == ("Replace", True, True, "demo-worker-1-0")
    assert p.delete == ["demo-worker-1-0"] and p.create == [] and p.incarnation == 0
    assert p.status["incarnation"] == 0 and p.status["restarts"]["infrastructure"] == 1
    # the pod is gone; the spare has not trained yet: no new pod
    p2 = plan(job_view(advance(body, p)), [pods[0], pods[2]], NOW + dt.timedelta(seconds=2))
    assert p2.create == [] and p2.requeue_after is not None
    # the job trains again (the incident closed): the next spare is created under the freed index
    recovered = advance(body, p)
    recovered["status"]["incidents"][-1]["recoveredAt"] = fmt_time(NOW + dt.timedelta(seconds=4))
    p3 = plan(job_view(recovered), [pods[0], pods[2]], NOW + dt.timedelta(seconds=5))
    assert p3.create == [1] and p3.incarnation == 0


def test_a_silent_participant_of_a_broken_round_is_taken_for_gone_and_only_then():
    from types import SimpleNamespace as NS

    from stoker.operator.launch_spare import broken_round_gone

    settings = NS(min_nodes=2, max_nodes=2, keep_alive_interval=dt.timedelta(seconds=1))
    beats = {"dead": NOW - dt.timedelta(seconds=2), "slow": NOW - dt.timedelta(seconds=1.2)}
    broken = NS(complete=True, participants={"dead": 0}, last_heartbeats=beats)
    assert broken_round_gone(broken, settings, NOW) == ["dead"]   # a survivor left to re-join: the lost node
    assert broken_round_gone(NS(complete=True, participants={"slow": 0}, last_heartbeats=beats), settings, NOW) == []
    whole = NS(complete=True, participants={"dead": 0, "slow": 1}, last_heartbeats=beats)
    assert broken_round_gone(whole, settings, NOW) == []      # an unbroken round: torch's own expiry
    filling = NS(complete=False, participants={"dead": 0}, last_heartbeats=beats)
    assert broken_round_gone(filling, settings, NOW) == []
    elastic = NS(min_nodes=1, max_nodes=2, keep_alive_interval=settings.keep_alive_interval)
    assert broken_round_gone(broken, elastic, NOW) == []      # fewer than max is a normal elastic round
