"""Status writes do not follow the heartbeat rate: heartbeat-refreshed fields (metrics,
workerHeartbeats) are written at most every status_heartbeat_interval_seconds per job, while
phase changes, conditions and failures are written in the pass that decides them."""
from __future__ import annotations

import copy

import stoker.operator.controller as controller_mod
from stoker.operator.controller import Controller
from stoker.operator.pass_state import Event, Plan
from stoker.operator.pods import RenderConfig
from stoker.operator.status import write_due

from .helpers import NOW, job_body
from .test_controller import FakeKube

RUNNING = {"phase": "Running", "metrics": {"step": 10}, "workerHeartbeats": [{"rank": 0, "step": 10}]}


def hb(step: int) -> dict:
    return {**RUNNING, "metrics": {"step": step}, "workerHeartbeats": [{"rank": 0, "step": step}]}


def test_a_heartbeat_only_change_waits_for_the_interval_since_the_last_write():
    assert not write_due(RUNNING, hb(11), since_write_s=1.0, min_interval_s=5.0)
    assert write_due(RUNNING, hb(11), since_write_s=5.0, min_interval_s=5.0)


def test_a_job_this_operator_never_wrote_is_written_at_once():
    assert write_due(RUNNING, hb(11), since_write_s=None, min_interval_s=5.0)


def test_a_phase_change_is_written_at_once_even_right_after_a_write():
    assert write_due(RUNNING, {**hb(11), "phase": "Restarting"}, since_write_s=0.1, min_interval_s=5.0)


def test_a_failure_is_written_at_once():
    failed = {**hb(11), "incidents": [{"kind": "Replace"}], "restarts": {"total": 1}}
    assert write_due(RUNNING, failed, since_write_s=0.1, min_interval_s=5.0)


def test_a_new_checkpoint_is_written_at_once():
    assert write_due(RUNNING, {**hb(11), "lastCheckpoint": {"step": 10}}, since_write_s=0.1, min_interval_s=5.0)


def test_the_first_metrics_of_a_job_are_written_at_once():
    assert write_due({"phase": "Running"}, hb(1), since_write_s=0.1, min_interval_s=5.0)


def test_a_pass_with_events_or_other_side_effects_writes_at_once():
    assert write_due(RUNNING, hb(11), since_write_s=0.1, min_interval_s=5.0, urgent=True)


def test_nothing_changed_writes_nothing_however_long_ago():
    assert not write_due(RUNNING, copy.deepcopy(RUNNING), since_write_s=1e9, min_interval_s=5.0)


def test_a_removed_field_is_a_change():
    assert write_due(RUNNING, {k: v for k, v in RUNNING.items() if k != "phase"}, since_write_s=0.1,
                     min_interval_s=5.0)


def test_interval_zero_writes_every_change():
    assert write_due(RUNNING, hb(11), since_write_s=0.0, min_interval_s=0.0)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _writes_in_a_minute(monkeypatch, heartbeat_s: float, interval_s: float = 5.0) -> int:
    """Passes triggered at the heartbeat rate for 60 s, each seeing a new step: how many writes."""
    body = job_body(status=dict(RUNNING))
    kube, clock, step = FakeKube(body), Clock(), [10]

    def fake_plan(job, pods, now, obs=None, settings=None, workload=None):
        return Plan(incarnation=0, status={**job.status, **hb(step[0])})

    monkeypatch.setattr(controller_mod, "plan", fake_plan)
    c = Controller(kube, RenderConfig(), clock=lambda: NOW, status_heartbeat_interval_s=interval_s, mono=clock)
    c.trigger("ns", "demo")  # the operator's first pass over the job
    kube.calls.clear()
    for _ in range(int(60 / heartbeat_s)):
        clock.t += heartbeat_s
        step[0] += 1
        c.trigger("ns", "demo")
    return kube.calls.count("status")


def test_the_status_write_rate_does_not_grow_with_the_heartbeat_rate(monkeypatch):
    every_second = _writes_in_a_minute(monkeypatch, 1.0)
    ten_a_second = _writes_in_a_minute(monkeypatch, 0.1)
    assert every_second == ten_a_second == 12   # one per 5 s interval
    assert _writes_in_a_minute(monkeypatch, 1.0, interval_s=0) == 60   # unthrottled: one per heartbeat


def test_a_phase_change_between_throttled_writes_is_written_in_its_own_pass(monkeypatch):
    body = job_body(status=dict(RUNNING))
    kube, clock = FakeKube(body), Clock()
    phases = iter(["Running", "Running", "Restarting"])

    def fake_plan(job, pods, now, obs=None, settings=None, workload=None):
        pl = Plan(incarnation=0, status={**job.status, **hb(20), "phase": next(phases)})
        if pl.status["phase"] == "Restarting":
            pl.events.append(Event("Warning", "Restarting", "worker failed"))
        return pl

    monkeypatch.setattr(controller_mod, "plan", fake_plan)
    c = Controller(kube, RenderConfig(), clock=lambda: NOW, status_heartbeat_interval_s=5.0, mono=clock)
    c.trigger("ns", "demo")                          # writes (first pass)
    clock.t += 0.5
    c.trigger("ns", "demo")                          # nothing new
    clock.t += 0.5
    c.trigger("ns", "demo")                          # the restart: written 1 s after the last write
    assert kube.calls.count("status") == 2
    assert kube.job["status"]["phase"] == "Restarting"
    assert kube.calls[-1] == "event Restarting"
