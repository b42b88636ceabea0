"""stoker.worker.health (pure): what counts as an anomaly, and what does not."""
from __future__ import annotations

import math

import pytest

from stoker.worker import config as cfgmod
from stoker.worker import health as H


def feed(mon: H.Monitor, losses, norm=1.0, start=1):
    out = []
    for i, loss in enumerate(losses, start):
        a = mon.observe(i, loss, norm, 1000.0)
        if a:
            out.append(a)
    return out


def test_non_finite_loss_or_norm_is_caught_at_its_step_whatever_the_history():
    mon = H.Monitor(H.Rules())
    assert feed(mon, [4.0, 3.9]) == []
    a = mon.observe(3, math.nan, 1.0)
    assert (a.step, a.kind, a.statistic) == (3, H.NON_FINITE, "loss=nan")
    assert mon.observe(4, 3.8, math.inf).statistic == "grad_norm=inf"
    assert mon.action_for(a) == H.ROLLBACK


def test_a_spike_is_judged_by_robust_z_and_a_falling_or_noisy_loss_is_not():
    mon = H.Monitor(H.Rules(loss_spike_z=6, min_history=5, window=20))
    falling = [5.0 - 0.1 * i + (0.02 if i % 2 else -0.02) for i in range(30)]
    assert feed(mon, falling) == []
    a = mon.observe(31, 40.0, 1.0)
    assert a is not None and a.kind == H.LOSS_SPIKE and "robust z=" in a.statistic
    assert mon.action_for(a) == H.REPORT  # spikes: report unless told otherwise
    # the spike never entered the window: the next normal step is normal
    assert mon.observe(32, 2.1, 1.0) is None


def test_no_spike_is_judged_before_min_history_steps():
    mon = H.Monitor(H.Rules(loss_spike_z=3, min_history=10))
    assert feed(mon, [1.0] * 5 + [100.0]) == []


def test_a_flat_curve_does_not_turn_noise_into_alarms():
    mon = H.Monitor(H.Rules(loss_spike_z=6, min_history=5))
    assert feed(mon, [2.0] * 20 + [2.0001, 1.9999, 2.0002]) == []


def test_a_throughput_stall_is_reported_once_per_stall():
    mon = H.Monitor(H.Rules(stall_fraction=0.5, stall_steps=3, min_history=4))
    got = [mon.observe(i, 1.0, 1.0, 1000.0 if i <= 10 or i > 20 else 100.0) for i in range(1, 30)]
    stalls = [a for a in got if a]
    assert [(a.step, a.kind) for a in stalls] == [(13, H.THROUGHPUT_STALL)]
    assert mon.action_for(stalls[0]) == H.REPORT


def test_forget_after_drops_the_steps_a_rollback_undid():
    mon = H.Monitor(H.Rules(loss_spike_z=6, min_history=3, window=10))
    feed(mon, [1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0])  # a level shift: the window learns it
    mon.forget_after(4)
    assert mon.observe(5, 5.0, 1.0) is not None  # from step 4's view, 5.0 is a spike again


def test_ranges_parse_merge_and_name_the_field():
    assert H.parse_ranges("10:20, 15:30,40:50", "health.skip") == [(10, 30), (40, 50)]
    assert H.format_ranges([(10, 30), (40, 50)]) == "10:30,40:50"
    for bad in ("10", "a:b", "20:10", "-1:3"):
        with pytest.raises(ValueError, match="health.skip"):
            H.parse_ranges(bad, "health.skip")


def test_config_errors_name_the_field_and_the_fix():
    for raw, needle in (({"health": {"on_spike": "panic"}}, "health.on_spike: unknown action 'panic'"),
                        ({"health": {"skip": "5"}}, "health.skip: '5' is not START:END"),
                        ({"health": {"window": 0}}, "health.window: must be >= 1"),
                        ({"debug": {"poison_kind": "mud"}}, "debug.poison_kind"),
                        ({"parallel": {"mode": "pipeline-gpipe", "pp": 2}, "debug": {"poison_samples": "0:8"}},
                         "debug.poison_samples: not supported")):
        with pytest.raises(cfgmod.ConfigError, match=needle.replace("(", r"\(")):
            cfgmod.from_dict(raw, environ={})


def test_the_operator_health_env_overrides_the_file():
    env = {"STOKER_HEALTH": '{"on_non_finite": "fail", "max_rollbacks": 1}'}
    cfg = cfgmod.from_dict({"health": {"on_non_finite": "report", "window": 7}}, environ=env)
    assert (cfg.health.on_non_finite, cfg.health.max_rollbacks, cfg.health.window) == ("fail", 1, 7)
    with pytest.raises(cfgmod.ConfigError, match="STOKER_HEALTH: not JSON"):
        cfgmod.from_dict({}, environ={"STOKER_HEALTH": "{"})
