"""fp16 with dynamic loss scaling (parallel.fp16), torchrun DDP on 2 ranks: overflowing steps
are skipped and counted, the scale halves and grows back, an overflow is not a health anomaly,
and a run SIGKILLed mid-way resumes bit-identical (the scaler's state is in the checkpoint)."""
from __future__ import annotations

from pathlib import Path

import pytest

from stoker.worker import config as cfgmod

from . import harness as h

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(600)]

FP16 = {"mode": "ddp", "fp16": True, "loss_scale": 2.0 ** 20, "loss_scale_growth_interval": 2}


def scales(metrics):
    return [(m["step"], m["loss_scale"], m["overflow_skips"]) for m in metrics if "loss" in m]


def test_overflows_are_skipped_counted_and_a_killed_run_resumes_bit_identical(tmp_path: Path):
    straight = h.run(tmp_path, "straight", h.base_config(tmp_path, "straight", parallel=FP16, train={"steps": 8}), 2)
    got = scales(straight["metrics"])
    skipped = got[-1][2]
    assert skipped >= 1, f"no step overflowed at scale 2^20: {got}"
    assert len({s for _, s, _ in got}) > 1, "the scale never moved"
    assert not [m for m in straight["metrics"] if m.get("event") in ("anomaly", "rollback")], \
        "an fp16 overflow is loss scaling's business, not a health anomaly"

    ckpt = tmp_path / "ckpt"
    cfg = h.base_config(tmp_path, "job", parallel=FP16, train={"steps": 8},
                        checkpoint={"uri": str(ckpt), "interval": 2}, debug={"stall_after_step": 5})
    h.run_until_then_kill9(tmp_path, "job", cfg, 2, ready=lambda: h.stalled(cfg))
    cfg["debug"] = {}
    resumed = h.run(tmp_path, "job", cfg, 2)
    assert resumed["summary"]["resumed_from"] == 4
    assert resumed["summary"]["checksum"] == straight["summary"]["checksum"]
    assert scales(resumed["metrics"]) == got, "the resumed run scales and skips exactly like the straight one"


def test_fp16_refuses_what_it_cannot_do_naming_the_field():
    for parallel, needle in (({"fp16": True, "bf16": True}, "parallel.fp16 and parallel.bf16: pick one"),
                             ({"fp16": True, "mode": "zero3"}, "parallel.fp16: loss scaling runs with modes single")):
        with pytest.raises(cfgmod.ConfigError, match=needle):
            cfgmod.from_dict({"parallel": parallel}, environ={})
