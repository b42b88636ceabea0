"""spec.health on the operator's side (pure): what the workers are told, each reported
anomaly recorded once, and a trainer that gave up (exit 87) failing the job without a restart."""
from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

from stoker.operator import detection as D
from stoker.operator import policy_health as P
from stoker.operator import recovery as R
from stoker.operator.jobspec import job_view
from stoker.operator.pods import worker_env
from stoker.operator.reconcile import begin

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)


def anomaly(step=23, action="rollback", rollbacks=1, **kw):
    return {"seq": 1, "step": step, "kind": "NonFinite", "statistic": "loss=nan", "action": action,
            "rolled_back_to": 20, "skip_from": 176, "skip_to": 184, "batches_skipped": 1, "rollbacks": rollbacks,
            **kw}


def worker(rank, *anomalies, incarnation=0):
    return SimpleNamespace(rank=rank, incarnation=incarnation, pod_name=f"j-worker-{rank}-0", anomalies=anomalies)


def job(health=None, status=None):
    body = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "t"}]}}},
            "status": status or {}}
    if health is not None:
        body["spec"]["health"] = health
    return job_view(body)


def test_the_workers_get_spec_health_in_the_trainers_terms_and_the_ranges_skipped_so_far():
    env = P.worker_env({"onNonFinite": "Rollback", "onSpike": "Fail", "lossSpikeZScore": 6, "maxRollbacks": 2},
                       {"health": {"skip": "176:184"}})
    assert json.loads(env) == {"on_non_finite": "rollback", "on_spike": "fail", "loss_spike_z": 6,
                               "max_rollbacks": 2, "skip": "176:184"}
    assert P.worker_env({}, {}) is None
    # a person's ranges (spec.health.skip, e.g. a paused job's window) join the rolled-back ones
    assert json.loads(P.worker_env({"onNonFinite": "Pause", "skip": "180:200,8:16"},
                                   {"health": {"skip": "176:184"}})) == {"on_non_finite": "pause",
                                                                        "skip": "8:16,176:200"}


def test_the_pod_env_carries_stoker_health():
    from stoker.operator.pods import RenderConfig

    env = {e["name"]: e.get("value") for e in worker_env(job({"maxRollbacks": 1}), 0, 0, RenderConfig())}
    assert json.loads(env["STOKER_HEALTH"]) == {"max_rollbacks": 1}


def test_every_rank_reports_the_anomaly_and_it_is_recorded_once():
    from stoker.operator import supervision

    obs = supervision.Observed(workers=(worker(0, anomaly()), worker(1, anomaly())))
    ps = begin(job({"maxRollbacks": 3}), [], NOW, obs, None)
    P.anomalies(ps)
    [inc] = [i for i in ps.st["incidents"] if i["kind"] == "Anomaly"]
    assert inc["anomaly"]["rolledBackTo"] == 20 and inc["step"] == 23
    assert "rollback 1 of spec.health.maxRollbacks=3" in inc["message"]
    assert ps.st["health"]["skip"] == "176:184" and ps.st["health"]["anomalies"] == 1
    assert [e.reason for e in ps.p.events] == ["TrainingRolledBack"]
    [cond] = [c for c in ps.conds if c["type"] == "TrainingAnomaly"]
    assert cond["status"] == "True" and cond["reason"] == "NonFinite" and "step 23" in cond["message"]
    # the next pass sees the same reports again: nothing new is recorded
    ps2 = begin(job({"maxRollbacks": 3}, status=ps.st), [], NOW, obs, None)
    P.anomalies(ps2)
    assert len([i for i in ps2.st["incidents"] if i["kind"] == "Anomaly"]) == 1 and not ps2.p.events


def test_skipped_ranges_merge():
    assert P.merge_skip("176:184", anomaly(skip_from=184, skip_to=192)) == "176:192"
    assert P.merge_skip("", anomaly(action="report")) == ""


def test_a_trainer_that_gave_up_fails_the_job_at_once_naming_why():
    pod = SimpleNamespace(name="j-worker-0-0", node="n", exit_code=87, message="training diverged: NonFinite ...",
                          last_step=23, reason="Error", disruption=None, phase="Failed", terminated=True,
                          finished_at=NOW)
    f = D.classify_pod(pod, None, node_known=False)
    assert f.cause == D.TRAINING_DIVERGED
    got = R.decide(f, {"userError": 0}, [], R.Policy(max_restarts=3))
    assert isinstance(got, R.Fail) and got.reason == "TrainingDiverged"
    assert "training diverged: NonFinite" in got.message
