"""Elastic resume: a checkpoint written by 4 ranks resumes at 2 and at 3 ranks (and
in another layout) with the same global batch; the loss curve continues.

Bound: at every step after the resume, |loss_resumed - loss_4rank| <= 1e-5 x
loss_4rank. Same samples per step (global order is world-size independent), same
state; only fp32 reduction order differs (~1e-8 relative observed). Losing the
optimizer state, the LR schedule position or the sampler position changes the
loss by > 1e-3.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stoker.common import layout

from . import harness as h

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(600)]

RESUME_AT = 4
STEPS = 8
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def four_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elastic")
    ckpt = tmp / "ckpt-4"
    cfg = h.base_config(tmp, "ref4", parallel={"mode": "zero3"}, train={"steps": STEPS},
                        checkpoint={"uri": str(ckpt), "interval": RESUME_AT, "async_mode": "disabled"})
    result = h.run(tmp, "ref4", cfg, 4)
    print(f"[4 ranks zero3] {result['seconds']:.1f}s")
    return tmp, ckpt, result


@pytest.mark.parametrize("nproc, parallel", [
    (2, {"mode": "zero3"}),
    (3, {"mode": "zero3"}),
    (2, {"mode": "pipeline-gpipe", "pp": 2}),
], ids=["zero3-2", "zero3-3", "pipeline-gpipe-2"])
def test_resume_at_another_world_size_continues_the_loss(four_rank_run, nproc, parallel):
    tmp, ckpt4, ref = four_rank_run
    name = f"resume-{parallel['mode']}-{nproc}"
    ckpt = tmp / f"ckpt-{name}"
    ckpt.mkdir()
    shutil.copytree(ckpt4 / layout.step_dir(RESUME_AT), ckpt / layout.step_dir(RESUME_AT))
    cfg = h.base_config(tmp, name, parallel=parallel, train={"steps": STEPS},
                        checkpoint={"uri": str(ckpt), "interval": RESUME_AT})
    got = h.run(tmp, name, cfg, nproc)
    print(f"[{name}] {got['seconds']:.1f}s")
    assert got["summary"]["resumed_from"] == RESUME_AT
    assert got["summary"]["resumed_world_size"] == 4  # the trainer says it resharded 4 -> nproc
    assert got["summary"]["world_size"] == nproc
    want, have = h.losses(ref["metrics"]), h.losses(got["metrics"])
    assert list(have) == list(range(RESUME_AT + 1, STEPS + 1)), "resumed runs start after the checkpoint"
    for step, loss in have.items():
        print(f"  step {step}: 4 ranks {want[step]:.8f}  {nproc} ranks {loss:.8f}  "
              f"rel diff {abs(loss - want[step]) / want[step]:.2e}")
        assert loss == pytest.approx(want[step], rel=LOSS_RTOL), f"step {step}"
    assert got["metrics"][-1]["tokens_seen"] == ref["metrics"][-1]["tokens_seen"]
