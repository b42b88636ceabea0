"""Preemption with a grace period: the operator sees a running worker pod being
deleted by someone else (kube-scheduler preemption, the eviction API, a node
drain), asks every worker to checkpoint and stop within the pod's grace period,
then restarts the job as a new incarnation from that checkpoint on the
preemption budget. Pure decisions (drain.drain_step / preemption_restart)
and the reconcile pass that carries them out; the launcher's SIGTERM hold."""
from __future__ import annotations

import copy
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from stoker.common import env as E
from stoker.operator import detection as D
from stoker.operator import launch
from stoker.operator import supervision as S
from stoker.operator import drain as DR
from stoker.operator.jobspec import job_view
from stoker.operator.pods import RenderConfig, render_pod
from stoker.operator.reconcile import plan
from stoker.operator.podview import PodView, pod_view

from .test_detection import NOW, rp

SETTINGS = S.Settings(drain_grace_s=120, preemption_min_grace_s=10, preemption_margin_s=5)


def ts(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def raw_pod(index: int, *, incarnation: int = 0, phase: str = "Running", exit_code: int | None = None,
            deleted_with_grace: int | None = None, deleted_at: dt.datetime = NOW, disruption: str | None = None,
            body: dict | None = None) -> dict:
    """A worker pod as the API server shows it; `deleted_with_grace`: deleted at `deleted_at`
    with that gracePeriodSeconds (deletionTimestamp = then + grace, as the API server sets it)."""
    job = job_view(body or job_body())
    pod = copy.deepcopy(render_pod(job, index, incarnation, RenderConfig()))
    pod["spec"]["nodeName"] = f"n{index}"
    st: dict = {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}] if phase == "Running" else []}
    if disruption:
        st["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if exit_code is not None:
        st["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {"exitCode": exit_code}}}]
    pod["status"] = st
    if deleted_with_grace is not None:
        pod["metadata"]["deletionTimestamp"] = ts(deleted_at + dt.timedelta(seconds=deleted_with_grace))
        pod["metadata"]["deletionGracePeriodSeconds"] = deleted_with_grace
    return pod


def job_body(status: dict | None = None, checkpoint: bool = True, suspend: bool = False) -> dict:
    spec: dict = {
        "replicas": 2,
        "template": {"spec": {"containers": [{"name": "trainer", "image": "python:3.11",
                                              "command": ["python", "train.py"]}]}},
        "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 30},
        "runPolicy": {"suspend": suspend, "cleanPodPolicy": "Running"},
    }
    if checkpoint:
        spec["checkpoint"] = {"uri": "s3://b/demo", "intervalSteps": 5}
    return {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "demo", "namespace": "ns", "uid": "0123456789abcdef", "generation": 1,
                         "resourceVersion": "1"},
            "spec": spec, "status": status or {}}


def facts(*pods: dict) -> list[PodView]:
    return [f for f in (pod_view(p) for p in pods) if f is not None]


RANKS = (rp(0, step=12, pod_name="demo-worker-0-0"), rp(1, step=12, pod_name="demo-worker-1-0"))


def step(pods, status=None, *, ranks=RANKS, heartbeats=True, checkpointing=True, suspend=False, excess=(),
         now=NOW):
    return DR.drain_step(status=status or {}, obs=S.Observed(facts=tuple(facts(*pods)), ranks=tuple(ranks),
                                                            heartbeats=heartbeats),
                        incarnation=0, checkpointing=checkpointing, suspend=suspend, excess=list(excess),
                        current_pods=facts(*pods), now=now, grace_s=120, min_grace_s=10, margin_s=5)


# ----------------------------------------------------------------------------- the pure decision


def test_pod_facts_carry_the_deletion_deadline_and_grace():
    [f] = facts(raw_pod(1, deleted_with_grace=30, disruption="PreemptionByScheduler"))
    assert f.deleting and f.deletion_grace_s == 30 and f.deletion_at == NOW + dt.timedelta(seconds=30)
    assert f.disruption == "PreemptionByScheduler"


def test_a_worker_preempted_with_a_grace_period_starts_a_drain_that_ends_before_the_kill():
    pods = (raw_pod(0), raw_pod(1, deleted_with_grace=30, disruption="PreemptionByScheduler"))
    d = step(pods)
    assert (d.kind, d.reason) == ("start", "Preemption")
    assert d.drain == {"reason": "Preemption", "requestedAt": ts(NOW), "afterStep": 12,
                       "deadline": ts(NOW + dt.timedelta(seconds=25)), "pod": "demo-worker-1-0", "node": "n1",
                       "disruption": "PreemptionByScheduler"}
    assert "demo-worker-1-0" in d.message and "PreemptionByScheduler" in d.message
    # `kubectl delete pod` (no DisruptionTarget) with the default grace drains too
    assert step((raw_pod(0), raw_pod(1, deleted_with_grace=30))).reason == "Preemption"


@pytest.mark.parametrize("why, pods, kw", [
    ("the operator's own delete (short grace)", (raw_pod(0), raw_pod(1, deleted_with_grace=3)), {}),
    ("too little grace left to drain", (raw_pod(0), raw_pod(1, deleted_with_grace=30,
                                                             deleted_at=NOW - dt.timedelta(seconds=25))), {}),
    ("the pod already exited", (raw_pod(0), raw_pod(1, phase="Failed", exit_code=143, deleted_with_grace=30)), {}),
    ("the job does not checkpoint", (raw_pod(0), raw_pod(1, deleted_with_grace=30)), {"checkpointing": False}),
    ("no heartbeat service", (raw_pod(0), raw_pod(1, deleted_with_grace=30)), {"heartbeats": False}),
    ("no rank is running", (raw_pod(0), raw_pod(1, deleted_with_grace=30)),
     {"ranks": (rp(0, phase="FINISHED"), rp(1, phase="FAILED"))}),
    ("nothing deleted", (raw_pod(0), raw_pod(1)), {}),
])
def test_no_preemption_drain_when(why, pods, kw):
    assert step(pods, **kw).kind == "none", why


def test_a_scaled_away_pod_is_not_an_outside_deletion():
    pods = facts(raw_pod(0, deleted_with_grace=30), raw_pod(1, deleted_with_grace=30))
    going = DR.outside_deletions(pods, incarnation=0, excess=["demo-worker-1-0"], now=NOW, min_grace_s=10)
    assert [p.name for p in going] == ["demo-worker-0-0"]
    assert DR.outside_deletions(pods, incarnation=1, excess=[], now=NOW, min_grace_s=10) == []


def test_suspend_and_scale_down_keep_their_own_drain_reasons():
    pods = (raw_pod(0), raw_pod(1, deleted_with_grace=30))
    assert step(pods, suspend=True).reason == "Suspend"
    assert step(pods, excess=["demo-worker-1-0"]).reason == "ScaleDown"


def preempting(now=NOW):
    pods = (raw_pod(0), raw_pod(1, deleted_with_grace=30, disruption="PreemptionByScheduler"))
    return {"drain": step(pods, now=now).drain}


def test_the_preemption_drain_waits_for_the_preempted_pod_too_then_is_done():
    st = preempting()
    later = NOW + dt.timedelta(seconds=4)
    # the other worker stopped, the preempted pod's trainer is still saving: wait
    half = (raw_pod(0, phase="Succeeded", exit_code=0),
            raw_pod(1, deleted_with_grace=30, disruption="PreemptionByScheduler"))
    assert step(half, st, now=later).kind == "wait"
    # both stopped (the preempted pod exited 0, or is gone already)
    for pods in ((raw_pod(0, phase="Succeeded", exit_code=0),
                  raw_pod(1, phase="Succeeded", exit_code=0, deleted_with_grace=30)),
                 (raw_pod(0, phase="Succeeded", exit_code=0),)):
        d = step(pods, st, now=later)
        assert (d.kind, d.reason, d.complete) == ("done", "Preemption", True)


def test_the_preemption_drain_gives_up_at_its_deadline_and_uses_the_last_committed_checkpoint():
    st = preempting()
    pods = (raw_pod(0), raw_pod(1, deleted_with_grace=30))
    assert step(pods, st, now=NOW + dt.timedelta(seconds=24)).kind == "wait"
    d = step(pods, st, now=NOW + dt.timedelta(seconds=25))  # deadline = deletion + 30 s - 5 s margin
    assert (d.kind, d.complete) == ("done", False)
    assert "grace period ran out" in d.message and "last committed checkpoint" in d.message


def test_the_restart_after_a_preemption_drain_spends_the_preemption_budget():
    st = preempting()
    done = DR.DrainStep("done", "Preemption", "every worker checkpointed and stopped", st["drain"], True)
    d = DR.preemption_restart(done, 0, NOW + dt.timedelta(seconds=6))
    assert (d.action, d.budget, d.counted, d.increment) == ("restart", "preemption", False, ("preemption", "total"))
    assert d.reason == DR.DRAINED_FOR_PREEMPTION
    inc = d.incident
    assert (inc["kind"], inc["cause"], inc["detectedCause"], inc["pod"], inc["node"], inc["step"], inc["drained"]) == (
        "Restart", "preemption", "Preempted", "demo-worker-1-0", "n1", 12, True)
    assert inc["detectionLatencySeconds"] == 6
    late = DR.preemption_restart(DR.DrainStep("done", "Preemption", "ran out", st["drain"], False), 0, NOW)
    assert late.incident["drained"] is False and "last committed checkpoint" in late.message
    # a node drain through the eviction API: the same drain, named for what it was (and its node avoided)
    evicted = {**st["drain"], "disruption": "EvictionByEvictionAPI"}
    e = DR.preemption_restart(DR.DrainStep("done", "Preemption", "", evicted, True), 0, NOW)
    assert (e.incident["detectedCause"], e.incident["cause"], e.budget) == ("Evicted", "preemption", "preemption")
    assert "evicted (EvictionByEvictionAPI)" in e.message
    assert S.avoid_nodes([e.incident]) == ("n1",) and S.avoid_nodes([d.incident]) == ()


# ----------------------------------------------------------------------------- the reconcile pass


def run_pass(body, pods, now, ranks=RANKS):
    obs = S.Observed(facts=tuple(facts(*pods)), ranks=tuple(ranks), heartbeats=True)
    views = [v for v in (pod_view(p) for p in pods) if v is not None]
    return plan(job_view(body), views, now, obs, SETTINGS)


def running():
    return {"phase": "Running", "incarnation": 0, "startTime": ts(NOW - dt.timedelta(minutes=5)),
            "restarts": {"userError": 0, "infrastructure": 0, "preemption": 0, "total": 0},
            "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}


def test_reconcile_drains_a_preempted_job_then_restarts_it_from_the_drain_checkpoint():
    preempted = raw_pod(1, deleted_with_grace=30, disruption="PreemptionByScheduler")
    p1 = run_pass(job_body(running()), (raw_pod(0), preempted), NOW)
    assert p1.drain_request == "Preemption" and p1.status["drain"]["reason"] == "Preemption"
    assert [(e.type, e.reason) for e in p1.events] == [("Normal", "Draining")]
    assert p1.create == [] and p1.delete == [] and p1.incarnation == 0

    t2 = NOW + dt.timedelta(seconds=2)
    p2 = run_pass(job_body(p1.status), (raw_pod(0), preempted), t2)
    assert p2.drain_request is None and p2.events == [] and p2.status["drain"] == p1.status["drain"]
    # the drain in progress stays named on every pass (a restarted operator re-sends its command)
    assert (p1.drain_reason, p2.drain_reason) == ("Preemption", "Preemption")
    assert p1.drain_id == p2.drain_id == p1.status["drain"]["requestedAt"]
    assert p2.incarnation == 0 and p2.create == []

    # every worker checkpointed and exited 0; the preempted pod is gone
    t3 = NOW + dt.timedelta(seconds=5)
    p3 = run_pass(job_body(p2.status), (raw_pod(0, phase="Succeeded", exit_code=0),), t3)
    st = p3.status
    assert "drain" not in st and st["incarnation"] == 1 and st["phase"] == "Restarting"
    assert st["restarts"] == {"userError": 0, "infrastructure": 0, "preemption": 1, "total": 1}
    [inc] = st["incidents"]
    assert (inc["detectedCause"], inc["cause"], inc["drained"], inc["pod"]) == (
        "Preempted", "preemption", True, "demo-worker-1-0")
    assert [(e.type, e.reason) for e in p3.events] == [("Normal", "Drained"), ("Normal", DR.DRAINED_FOR_PREEMPTION)]
    assert p3.restart_cause == "preemption" and p3.requeue_after == 0

    # the next pass replaces the old incarnation at once: no restart backoff after a drain
    p4 = run_pass(job_body(st), (raw_pod(0, phase="Succeeded", exit_code=0),), t3 + dt.timedelta(seconds=1))
    assert p4.delete == ["demo-worker-0-0"] and p4.create == [0, 1] and p4.incarnation == 1


def test_reconcile_falls_back_to_the_last_checkpoint_when_the_grace_runs_out():
    preempted = raw_pod(1, deleted_with_grace=30, disruption="PreemptionByScheduler")
    p1 = run_pass(job_body(running()), (raw_pod(0), preempted), NOW)
    p2 = run_pass(job_body(p1.status), (raw_pod(0), preempted), NOW + dt.timedelta(seconds=26))
    st = p2.status
    assert st["incarnation"] == 1 and st["restarts"]["preemption"] == 1 and st["restarts"]["userError"] == 0
    assert st["incidents"][-1]["drained"] is False
    assert ("Warning", DR.DRAINED_FOR_PREEMPTION) in [(e.type, e.reason) for e in p2.events]


def test_reconcile_leaves_pods_the_operator_deletes_itself_alone():
    # a manual restart or a failure restart deletes the old incarnation with Settings.delete_grace_s
    own = raw_pod(1, deleted_with_grace=SETTINGS.delete_grace_s)
    p = run_pass(job_body(running()), (raw_pod(0), own), NOW)
    assert p.drain_request is None and "drain" not in p.status


def test_worker_pods_get_a_grace_period_and_tell_the_launcher():
    pod = raw_pod(0)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert pod["spec"]["terminationGracePeriodSeconds"] == RenderConfig().termination_grace_s
    assert env[E.TERMINATION_GRACE] == str(RenderConfig().termination_grace_s)
    body = job_body()
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 90
    pod = raw_pod(0, body=body)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert pod["spec"]["terminationGracePeriodSeconds"] == 90 and env[E.TERMINATION_GRACE] == "90"


# ----------------------------------------------------------------------------- the launcher's hold


def test_the_launcher_holds_sigterm_only_where_a_drain_can_happen():
    full = {E.OPERATOR_ADDR: "10.0.0.1:50051", E.CHECKPOINT_URI: "s3://b/p", E.TERMINATION_GRACE: "60"}
    assert launch.drain_window(full) == 55
    assert launch.drain_window({**full, E.TERMINATION_GRACE: "5"}) == 0
    assert launch.drain_window({**full, E.TERMINATION_GRACE: "9"}) == 0   # too short for the operator to drain
    assert launch.drain_window({**full, E.TERMINATION_GRACE: "10"}) == 5
    assert launch.MIN_DRAIN_GRACE_S == S.Settings().preemption_min_grace_s
    assert launch.drain_window({k: v for k, v in full.items() if k != E.OPERATOR_ADDR}) == 0
    assert launch.drain_window({k: v for k, v in full.items() if k != E.CHECKPOINT_URI}) == 0
    assert launch.drain_window({**full, E.TERMINATION_GRACE: "soon"}) == 0


WORKER = textwrap.dedent("""
    import os, pathlib, sys, time
    pathlib.Path(sys.argv[1]).write_text("up")
    time.sleep(float(sys.argv[2]))   # the drain: checkpoint and stop, by itself
    sys.exit(0)
""")


def launcher(tmp_path, worker_s: float, grace: int | None):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ready = tmp_path / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if grace is not None:
        env.update({E.OPERATOR_ADDR: "127.0.0.1:1", E.CHECKPOINT_URI: str(tmp_path / "ckpt"),
                    E.TERMINATION_GRACE: str(grace)})
    proc = subprocess.Popen([sys.executable, "-m", "stoker.operator.launch", "--standalone", "--nproc-per-node=1",
                             "--monitor-interval=0.1", str(script), str(ready), str(worker_s)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the kubelet, at the start of the grace period
    out, _ = proc.communicate(timeout=90)
    return proc.returncode, out


@pytest.mark.torch
def test_on_sigterm_the_launcher_lets_a_draining_worker_finish_and_exits_0(tmp_path):
    code, out = launcher(tmp_path, worker_s=3, grace=30)
    assert code == 0, out[-3000:]
    assert "SIGTERM held" in out


@pytest.mark.torch
def test_the_launcher_stops_torchrun_when_the_hold_ends(tmp_path):
    code, out = launcher(tmp_path, worker_s=300, grace=10)  # held 5 s, the worker never stops by itself
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "did not stop within 5s" in out


@pytest.mark.torch
def test_without_a_drain_the_launcher_stops_at_once(tmp_path):
    code, out = launcher(tmp_path, worker_s=300, grace=None)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM held" not in out
