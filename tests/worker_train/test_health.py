"""Training health in real torchrun runs (2 processes, DDP on gloo): a poisoned data window
is rolled back and skipped, ending bit-identical to an undisturbed run that skipped the
same window; a job that diverges every time stops after its budget with exit code 87 and
the reason; a spike is caught by its robust z-score.

The poison is ``debug.poison_samples``: the batch that starts in the range gets its loss
multiplied by NaN (or 1000), so it is a property of the data positions, not of a step, and
a run that skips those positions never meets it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from stoker.common import layout

from . import harness as h

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(600)]

STEPS, BATCH = 10, 24
WINDOW = f"{4 * BATCH}:{5 * BATCH}"   # the batch of step 5


def job(tmp: Path, name: str, **sections) -> dict:
    return h.base_config(tmp, name, parallel={"mode": "ddp"}, train={"steps": STEPS, "global_batch": BATCH},
                         checkpoint={"uri": str(tmp / name / "ckpt"), "interval": 2}, **sections)


def manifest(cfg: dict, step: int) -> dict:
    return json.loads((Path(cfg["checkpoint"]["uri"]) / layout.step_dir(step) / layout.MANIFEST).read_text())


@pytest.fixture(scope="module")
def skipped(tmp_path_factory) -> dict:
    """The undisturbed run given the window in health.skip (the reference of a rollback and of a pause)."""
    tmp = tmp_path_factory.mktemp("skipped")
    return h.run(tmp, "skipped", job(tmp, "skipped", health={"skip": WINDOW}), 2)


def test_a_poisoned_window_is_rolled_back_and_skipped_bit_identical_to_a_run_that_skipped_it(tmp_path, skipped):
    poisoned = job(tmp_path, "poisoned", debug={"poison_samples": WINDOW})
    got = h.run(tmp_path, "poisoned", poisoned, 2)
    rollbacks = [m for m in got["metrics"] if m.get("event") == "rollback"]
    assert rollbacks == [{"event": "rollback", "step": 4, "anomaly_step": 5, "kind": "NonFinite",
                          "skip_from": 4 * BATCH, "skip_to": 5 * BATCH}], rollbacks
    losses = [m for m in got["metrics"] if "loss" in m]
    assert [m["step"] for m in losses] == list(range(1, STEPS + 1)), "one record per step after the rollback"
    assert all(m["loss"] == m["loss"] for m in losses), "a NaN step was kept"
    assert manifest(poisoned, STEPS)["health"] == {"rollbacks": 1, "skip": WINDOW}

    assert got["summary"]["checksum"] == skipped["summary"]["checksum"]
    assert [m["loss"] for m in losses] == [m["loss"] for m in skipped["metrics"] if "loss" in m]
    # and skipping mattered: an undisturbed run that trains on the window ends elsewhere
    plain = h.run(tmp_path, "plain", job(tmp_path, "plain"), 2)
    assert plain["summary"]["checksum"] != got["summary"]["checksum"]


def test_a_job_that_diverges_every_time_stops_after_its_budget_with_the_reason(tmp_path):
    cfg = job(tmp_path, "diverging", debug={"poison_samples": f"{4 * BATCH}:100000"},
              health={"max_rollbacks": 2})
    path = h.write_config(tmp_path, "diverging", cfg)
    proc = subprocess.run(h.command(path, 2), cwd=tmp_path / "diverging", env=h._env(), capture_output=True,
                          text=True, timeout=h.TORCHRUN_TIMEOUT_S)
    assert proc.returncode != 0
    assert "training diverged: NonFinite at step 5 (loss=nan) after 2 rollbacks (health.max_rollbacks=2)" \
        in proc.stderr, proc.stderr[-3000:]
    assert "exitcode  : 87" in proc.stderr, proc.stderr[-3000:]   # torchrun's summary of the failed worker
    events = [m for m in h.read_metrics(cfg) if m.get("event") == "rollback"]
    assert [(e["step"], e["skip_from"]) for e in events] == [(4, 4 * BATCH), (4, 5 * BATCH)]


def test_pause_stops_with_only_earlier_checkpoints_and_a_resume_that_skips_the_window_is_bit_identical(tmp_path,
                                                                                                       skipped):
    """health.on_non_finite=pause: exit 88 naming the resume step and the window; the NaN state is never
    saved; resumed with the window in health.skip, the job ends as a run that skipped it from the start."""
    cfg = job(tmp_path, "paused", debug={"poison_samples": WINDOW}, health={"on_non_finite": "pause"})
    path = h.write_config(tmp_path, "paused", cfg)
    proc = subprocess.run(h.command(path, 2), cwd=tmp_path / "paused", env=h._env(), capture_output=True,
                          text=True, timeout=h.TORCHRUN_TIMEOUT_S)
    assert proc.returncode != 0
    assert (f"training paused: NonFinite at step 5 (loss=nan): paused (health.on_non_finite=pause); a restart "
            f"resumes from step 4; to skip the batches that made it, add {WINDOW} to health.skip first") \
        in proc.stderr, proc.stderr[-3000:]
    assert "exitcode  : 88" in proc.stderr, proc.stderr[-3000:]
    ckpt = Path(cfg["checkpoint"]["uri"])
    assert sorted(p.name for p in ckpt.glob("step-*")) == [layout.step_dir(2), layout.step_dir(4)]

    cfg["health"]["skip"] = WINDOW  # what a person does before `kubectl stoker restart`
    resumed = h.run(tmp_path, "paused", cfg, 2)
    assert resumed["summary"]["resumed_from"] == 4
    assert resumed["summary"]["checksum"] == skipped["summary"]["checksum"]


def test_a_loss_spike_is_caught_by_its_robust_z_score_and_rolled_back(tmp_path):
    window = f"{7 * BATCH}:{8 * BATCH}"   # step 8, after min_history steps
    cfg = job(tmp_path, "spike", debug={"poison_samples": window, "poison_kind": "spike"},
              health={"on_spike": "rollback", "loss_spike_z": 8, "min_history": 5})
    got = h.run(tmp_path, "spike", cfg, 2)
    events = [m for m in got["metrics"] if m.get("event") == "rollback"]
    assert [(e["anomaly_step"], e["kind"], e["step"]) for e in events] == [(8, "LossSpike", 6)], events
    skipped = h.run(tmp_path, "skipped", job(tmp_path, "skipped", health={"skip": window}), 2)
    assert got["summary"]["checksum"] == skipped["summary"]["checksum"]


def test_layer_group_gradient_norms_add_up_to_the_global_norm_and_agree_across_layouts(tmp_path):
    """health.grad_norm_groups: sqrt(sum of squares) of the groups is the global (pre-clip) norm,
    and a ZeRO-3 run (sharded DTensor gradients) reports the same groups as DDP (whole gradients)."""
    got = {}
    for mode in ("ddp", "zero3"):
        cfg = h.base_config(tmp_path, mode, parallel={"mode": mode}, train={"steps": 2},
                            health={"grad_norm_groups": True})
        got[mode] = [m for m in h.run(tmp_path, mode, cfg, 2)["metrics"] if "loss" in m]
    first = got["ddp"][0]
    groups = {k: v for k, v in first.items() if k.startswith("grad_norm.")}
    assert {"grad_norm.tok_emb", "grad_norm.pos_emb", "grad_norm.layers.0"} <= set(groups), sorted(groups)
    assert sum(v * v for v in groups.values()) ** 0.5 == pytest.approx(first["grad_norm"], rel=1e-5)
    sharded = {k: v for k, v in got["zero3"][0].items() if k.startswith("grad_norm.")}
    assert sharded.keys() == groups.keys()
    assert all(sharded[k] == pytest.approx(v, rel=1e-4) for k, v in groups.items()), (groups, sharded)
