"""The step split the SDK sends (docs/metrics.md, "The step split"): seconds per declared
activity between two steps, and its share of the step in status.metrics."""
from __future__ import annotations

import itertools

import pytest

from stoker.operator.supervision import training_metrics
from stoker.worker import sdk
from stoker.worker.sdk import ActivitySplit, Session


def test_the_split_adds_each_activity_between_two_steps_and_starts_again_after_each():
    split = ActivitySplit()
    assert split.take("", 0.0) == {}  # a script that never says what it does sends nothing
    split.close("", 10.0)  # set_activity("data") at 10
    split.close("data", 10.5)  # compute at 10.5
    split.close("compute", 12.0)  # collective at 12
    split.close("collective", 12.25)  # compute at 12.25
    assert split.take("compute", 12.5) == {"data_wait_seconds": 0.5, "compute_seconds": 1.75,
                                           "collective_seconds": 0.25}
    split.close("compute", 13.0)  # data at 13: the compute after the step counts for the next one
    assert split.take("data", 13.5) == {"data_wait_seconds": 0.5, "compute_seconds": 0.5, "collective_seconds": 0.0}


def test_a_session_sends_the_split_with_the_step_and_the_scripts_own_values_win(monkeypatch):
    clock = itertools.chain([100.0, 100.2, 101.0, 101.1, 101.4], itertools.repeat(101.5))
    monkeypatch.setattr(sdk.time, "monotonic", lambda: next(clock))
    s = Session(address=None)
    s.set_activity("data")  # 100.0
    s.set_activity("compute")  # 100.2
    s.set_activity("collective")  # 101.0
    s.set_activity("compute")  # 101.1
    s.step(1, loss=2.0, data_wait_seconds=0.15)  # 101.4
    m = dict(s._build_message(1).metrics.extra)  # the operator reads extra like the named fields
    assert m["data_wait_seconds"] == pytest.approx(0.15)  # measured by the script itself
    assert m["compute_seconds"] == pytest.approx(1.1) and m["collective_seconds"] == pytest.approx(0.1)


def test_status_carries_the_shares_of_the_step_and_the_gpu_picture():
    m = training_metrics({"step_time_seconds": 2.0, "data_wait_seconds": 0.1, "collective_seconds": 0.5,
                          "gpu_utilization": 87.0, "memory_bytes": 3.5e9, "grad_norm": float("nan")})
    assert m == {"dataWaitFraction": 0.05, "collectiveWaitFraction": 0.25, "gpuUtilization": 0.87,
                 "gpuMemoryBytes": 3.5e9}
    assert training_metrics({"collective_seconds": 0.5}) == {}  # no step time: no share
