"""One pass's failure decision and progress fields, from observed facts."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from stoker.operator import detection as D
from stoker.operator import recovery as R
from stoker.operator import supervision as S
from stoker.operator import policy_failure as F
from stoker.operator import drain as DR
from stoker.operator.jobspec import ExitCodeRule

from .test_detection import NOW, node, pod, rp

ZERO = {"userError": 0, "infrastructure": 0, "preemption": 0, "total": 0}
T = D.Timeouts(heartbeat_s=30, progress_s=10, startup_s=60, interval_s=1)


def decide(obs, restarts=ZERO, incidents=(), policy=R.Policy(max_restarts=2), rules=(), desired=2, incarnation=0):
    return F.decide(obs=obs, incarnation=incarnation, desired=desired, restarts=restarts, incidents=list(incidents),
                    policy=policy, rules=rules, t=T, now=NOW)


def test_healthy_job_no_decision():
    obs = S.Observed(facts=(pod(0), pod(1)), nodes={"n1": node()}, nodes_listed=True,
                     ranks=(rp(0), rp(1)), mono_now=101.0, heartbeats=True)
    assert decide(obs) is None


def test_sigkilled_worker_restarts_for_free_and_records_the_cause():
    obs = S.Observed(facts=(pod(0), pod(1, phase="Failed", exit_code=137, finished_ago=3)),
                     nodes={"n1": node()}, nodes_listed=True,
                     ranks=(rp(0, step=12), rp(1, step=12, pod_name="j-worker-1-0")), mono_now=101.0, heartbeats=True)
    d = decide(obs)
    assert (d.action, d.reason, d.budget, d.counted, d.increment) == (
        "restart", "WorkerKilled", "infrastructure", False, ("infrastructure", "total"))
    assert d.incident["detectedCause"] == "WorkerKilled" and d.incident["rank"] == 1 and d.incident["step"] == 12
    assert d.incident["detectionLatencySeconds"] == 3
    assert F.bump(ZERO, d.increment) == {"userError": 0, "infrastructure": 1, "preemption": 0, "total": 1}


def test_hang_is_detected_from_heartbeats_only_when_the_service_runs():
    # both ranks keep beating (nobody is frozen), rank 1 is a step behind: the step is stuck
    ranks = (rp(0, last_seen=130, advanced_at=100), rp(1, step=9, last_seen=130, advanced_at=100))
    obs = S.Observed(facts=(pod(0), pod(1)), nodes={"n1": node()}, nodes_listed=True, ranks=ranks,
                     mono_now=130.0, heartbeats=True)
    d = decide(obs)
    assert d.action == "restart" and d.finding.cause == D.HANG and d.incident["rank"] == 1
    assert decide(dataclasses.replace(obs, heartbeats=False)) is None


def test_a_rank_silent_while_its_peers_beat_is_frozen_within_seconds():
    quiet = (rp(0, last_seen=104, advanced_at=100), rp(1, last_seen=100.5, advanced_at=100))
    obs = S.Observed(facts=(pod(0), pod(1)), nodes={"n1": node()}, nodes_listed=True, ranks=quiet,
                     mono_now=104.0, heartbeats=True)
    d = decide(obs)   # 3.5 s of silence, heartbeat interval 1 s: frozen after 3 s
    assert d.action == "restart" and d.finding.cause == D.HEARTBEAT_LOST and d.incident["rank"] == 1
    assert "went silent 3.5s ago while heartbeats kept arriving" in d.finding.message
    assert d.incident["detectionLatencySeconds"] == pytest.approx(3.5)


def test_scaled_away_and_terminating_pods_are_not_failures():
    obs = S.Observed(facts=(pod(0), pod(1, phase="Failed", exit_code=143), pod(0, phase="Failed", exit_code=1,
                                                                                  deleting=True)))
    assert decide(obs, desired=1) is None


def test_failjob_rule_fails_at_once_and_ignore_restarts_for_free():
    failed = S.Observed(facts=(pod(0, phase="Failed", exit_code=42),))
    d = decide(failed, rules=[ExitCodeRule(frozenset({42}), "FailJob")])
    assert (d.action, d.reason) == ("fail", "ExitCodeRule") and d.incident["kind"] == "JobFailed"
    spent = {"userError": 2, "infrastructure": 0, "preemption": 0, "total": 2}
    d = decide(failed, restarts=spent, rules=[ExitCodeRule(frozenset({42}), "Ignore")])
    assert d.action == "restart" and not d.counted and d.increment == ("total",)


def test_restartjob_rule_makes_an_infrastructure_failure_count():
    obs = S.Observed(facts=(pod(0, phase="Failed", exit_code=137),))
    d = decide(obs, rules=[ExitCodeRule(frozenset({137}), "RestartJob")])
    assert d.counted and d.increment == ("userError", "total")


def test_a_spent_budget_fails_with_the_last_error_lines():
    obs = S.Observed(facts=(pod(0, phase="Failed", exit_code=3, message="Traceback\nValueError: step 5 is cursed"),))
    d = decide(obs, restarts={"userError": 2, "total": 2})
    assert (d.action, d.reason) == ("fail", "RestartLimitExceeded")
    assert "ValueError: step 5 is cursed" in d.message and d.incident["error"].endswith("cursed")


def test_lost_node_pod_is_replaced_in_an_elastic_job_and_its_node_avoided():
    obs = S.Observed(facts=(pod(0, node="a"), pod(1, node="b"), pod(2, node="c")),
                     nodes={"a": node("a"), "b": node("b", ready="Unknown"), "c": node("c")}, nodes_listed=True)
    d = decide(obs, desired=3, policy=R.Policy(elastic=True, min_replicas=1))
    assert (d.action, d.pods, d.avoid_nodes) == ("replace", ("j-worker-1-0",), ("b",))
    d = decide(obs, desired=3, policy=R.Policy(elastic=False))
    assert d.action == "restart" and d.avoid_nodes == ("b",)
    assert S.avoid_nodes([d.incident]) == ("b",)


def test_progress_sets_last_checkpoint_metrics_and_closes_the_open_incident():
    @dataclasses.dataclass
    class W:
        rank: int
        step: int
        metrics: dict
        world_size: int = 2
        incarnation: int = 1
        pod_name: str = "p"
        node_name: str = "n"
        phase: str = "TRAINING"
        last_seen_monotonic: float = 0.0

    obs = S.Observed(ranks=(rp(0, step=12, incarnation=1),), heartbeats=True,
                     workers=(W(0, 12, {"last_committed_step": 10, "loss": 1.5}), W(1, 12, {})))
    status = {"incidents": [{"kind": "Restart", "time": "2026-01-01T11:59:00Z", "incarnation": 0}]}
    out = S.progress(status, obs, incarnation=1, checkpoint_uri="s3://b/p", now=NOW)
    assert out["lastCheckpoint"] == {"step": 10, "time": "2026-01-01T12:00:00Z", "uri": "s3://b/p/step-00000010",
                                     "worldSize": 2}
    assert out["metrics"]["step"] == 12 and out["metrics"]["loss"] == 1.5
    assert out["incidents"][-1]["timeToRecoverSeconds"] == 60
    assert [b["rank"] for b in out["workerHeartbeats"]] == [0, 1]
    assert out["workerHeartbeats"][0] == {"rank": 0, "pod": "p", "node": "n", "step": 12, "phase": "TRAINING",
                                          "lastHeartbeatTime": "2026-01-01T12:00:00Z"}
    # nothing new: nothing to write
    again = S.progress({**status, **out}, obs, incarnation=1, checkpoint_uri="s3://b/p", now=NOW)
    assert again == {}
    assert S.progress(status, dataclasses.replace(obs, heartbeats=False), incarnation=1, checkpoint_uri=None,
                      now=NOW) == {}


def test_force_delete_needs_the_node_list():
    obs = S.Observed(facts=(pod(0, deleting=True, node="gone"),), nodes={}, nodes_listed=True)
    assert S.to_force_delete(obs) == ["j-worker-0-0"]
    assert S.to_force_delete(dataclasses.replace(obs, nodes_listed=False)) == []


def test_an_on_call_restart_is_a_free_coordinated_restart_with_an_incident():
    d = F.manual_restart("20260101T120000Z-abc123", 4, NOW)
    assert (d.action, d.reason, d.budget, d.counted, d.increment) == ("restart", "RestartRequested", "none", False,
                                                                      ("total",))
    assert d.incident["kind"] == "Restart" and d.incident["cause"] == "none" and d.incident["incarnation"] == 4
    assert "20260101T120000Z-abc123" in d.incident["message"]


def drain(status=None, suspend=False, excess=(), pods=(pod(0), pod(1)), ranks=(rp(0), rp(1)), heartbeats=True,
          checkpointing=True, now=NOW):
    obs = S.Observed(ranks=tuple(ranks), heartbeats=heartbeats)
    return DR.drain_step(status=status or {}, obs=obs, incarnation=0, checkpointing=checkpointing, suspend=suspend,
                        excess=list(excess), current_pods=list(pods), now=now, grace_s=60)


def test_a_planned_stop_starts_a_drain_only_when_workers_can_checkpoint():
    d = drain(excess=["j-worker-1-0"])
    assert d.kind == "start" and d.reason == "ScaleDown" and d.drain["afterStep"] == 10
    assert drain(suspend=True).reason == "Suspend"
    assert drain().kind == "none"                                   # nothing planned
    assert drain(suspend=True, heartbeats=False).kind == "none"     # nobody to ask
    assert drain(suspend=True, checkpointing=False).kind == "none"  # nowhere to save
    assert drain(suspend=True, ranks=(rp(0, phase="FINISHED"),)).kind == "none"


def test_a_drain_waits_for_every_worker_to_stop_or_for_its_grace_period():
    st = {"drain": {"reason": "ScaleDown", "requestedAt": "2026-01-01T11:59:30Z", "afterStep": 10}}
    assert drain(status=st).kind == "wait"
    stopped = (pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0))
    d = drain(status=st, pods=stopped)
    assert (d.kind, d.reason) == ("done", "ScaleDown")
    late = drain(status=st, now=NOW + dt.timedelta(seconds=31))
    assert late.kind == "done" and "grace period" in late.message


def test_a_checkpoint_that_did_not_commit_is_recorded_once():
    @dataclasses.dataclass
    class W:
        rank: int
        metrics: dict
        step: int = 12
        world_size: int = 2
        incarnation: int = 0
        pod_name: str = "j-worker-0-0"
        node_name: str = "n1"
        phase: str = "TRAINING"
        last_seen_monotonic: float = 0.0

    failed = {"checkpoint_ok": False, "checkpoint_step": 10, "last_committed_step": 5}
    obs = S.Observed(heartbeats=True, workers=(W(0, failed), W(1, failed)))
    out = S.progress({}, obs, incarnation=0, checkpoint_uri="s3://b/p", now=NOW)
    [inc] = out["incidents"]
    assert (inc["kind"], inc["cause"], inc["step"], inc["rank"]) == ("CheckpointFailed", "none", 10, 0)
    assert "step 5" in inc["message"]
    again = S.progress({**out}, obs, incarnation=0, checkpoint_uri="s3://b/p", now=NOW)
    assert "incidents" not in again


def test_ranks_of_pods_that_are_gone_are_not_silent_workers():
    # rank 2's pod was scaled away: its old heartbeat is history, not a lost worker
    ranks = (rp(0, last_seen=200, advanced_at=199), rp(1, last_seen=200, advanced_at=199),
             rp(2, last_seen=100, advanced_at=100, pod_name="j-worker-2-0"))
    obs = S.Observed(facts=(pod(0), pod(1)), nodes={"n1": node()}, nodes_listed=True, ranks=ranks,
                     mono_now=200.0, heartbeats=True)
    assert decide(obs) is None
    with_pod = dataclasses.replace(obs, facts=(pod(0), pod(1), pod(2)))
    assert decide(with_pod, desired=3).finding.cause == D.HEARTBEAT_LOST


def test_a_replace_closes_only_when_a_survivor_steps_after_the_incident():
    """Survivors of a Replace have step times from before the failure: those do not
    say the job trains again; a step completed after the incident does."""
    status = {"incidents": [{"kind": "Replace", "time": "2026-01-01T11:59:50Z", "incarnation": 0}]}
    # the heartbeat clock reads 200 at NOW, so the incident was at 190 on it
    before = S.Observed(ranks=(rp(0, step=40, advanced_at=185.0), rp(1, step=40, advanced_at=186.0)),
                        heartbeats=True, mono_now=200.0)
    assert "incidents" not in S.progress(status, before, incarnation=0, checkpoint_uri=None, now=NOW)
    after = dataclasses.replace(before, ranks=(rp(0, step=41, advanced_at=195.0), rp(1, step=40, advanced_at=186.0)))
    closed = S.progress(status, after, incarnation=0, checkpoint_uri=None, now=NOW)["incidents"][-1]
    assert closed["recoveredAt"] == "2026-01-01T12:00:00Z" and closed["timeToRecoverSeconds"] == 10


def test_a_worker_that_never_heartbeats_in_a_job_that_does_is_restarted_on_the_infrastructure_budget():
    from .test_detection import started
    obs = S.Observed(facts=(started(0, 700), started(1, 700)), heartbeats=True, mono_now=100.0,
                     ranks=(rp(0, step=-1, pod_name="j-worker-0-0", last_seen=99.0, advanced_at=99.0),))
    d = decide(obs, incidents=[], desired=2)
    assert d is None  # not known to heartbeat: a script without the SDK is allowed
    d = F.decide(obs=obs, incarnation=0, desired=2, restarts=ZERO, incidents=[], policy=R.Policy(max_restarts=2),
                 rules=(), t=dataclasses.replace(T, startup_s=600), now=NOW, expect_heartbeats=True)
    assert d is not None and d.action == "restart" and d.finding.cause == D.HEARTBEAT_LOST
    assert d.finding.pod == "j-worker-1-0" and d.budget == "infrastructure" and not d.counted
