"""The trainer loop in one process (no torchrun): operator commands through the SDK
session, continued pretraining with ``init_from``, and resume taking precedence."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from stoker.common import layout  # noqa: E402
from stoker.worker import config as cfgmod  # noqa: E402
from stoker.worker.checksum import model_checksum  # noqa: E402
from stoker.worker.trainer import Trainer  # noqa: E402

from . import harness as h  # noqa: E402

pytestmark = pytest.mark.torch


class ScriptedSession:
    """Stands in for stoker.worker.sdk.Session: commands arrive at given steps."""

    def __init__(self, checkpoint_at=(), stop_at=None):
        self.checkpoint_at, self.stop_at = set(checkpoint_at), stop_at
        self.current = 0
        self.phases: list[str] = []
        self.steps: list[tuple[int, dict]] = []
        self.reports: list = []
        self.pending = False
        self.anomalies: list[dict] = []

    def start(self):
        return self

    def step(self, step, **metrics):
        self.current = step
        self.steps.append((step, metrics))
        if step in self.checkpoint_at or step == self.stop_at:
            self.pending = True

    def set_phase(self, phase, error="", reason=""):
        self.phases.append(phase)
        self.reason = reason

    def set_last_committed_step(self, step):
        pass

    def checkpoint_requested(self):
        return self.pending or self.current + 1 in self.checkpoint_at

    def stop_requested(self):
        return self.stop_at is not None and self.current + 1 >= self.stop_at

    def report_checkpoint(self, result):
        self.reports.append(result)
        self.pending = False

    def journal_commit(self, step):
        pass

    def journal_resume_from_memory(self, step):
        pass

    def journal_world(self, world):
        pass

    def set_activity(self, name):
        pass

    def report_anomaly(self, **anomaly):
        self.anomalies.append(anomaly)

    def close(self):
        pass


def make(tmp: Path, name: str, **sections) -> cfgmod.Config:
    return cfgmod.from_dict(h.base_config(tmp, name, **sections), environ={})


def test_checkpoint_now_and_stop_after_checkpoint_are_honoured(tmp_path):
    ckpt = tmp_path / "ckpt"
    session = ScriptedSession(checkpoint_at={2}, stop_at=4)
    trainer = Trainer(make(tmp_path, "run", train={"steps": 10},
                           checkpoint={"uri": str(ckpt), "interval": 0, "async_mode": "async"}), session=session)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary["step"] == 4 and summary["stopped_early"]
    assert sorted(p.name for p in ckpt.iterdir() if (p / layout.COMMIT_MARKER).exists()) == \
        [layout.step_dir(2), layout.step_dir(4)]
    assert [(r.step, r.ok) for r in session.reports] == [(2, True), (4, True)], "each request acknowledged"
    assert "FINISHED" not in session.phases, "a drain before preemption is not the end of the job"
    assert [s for s, _ in session.steps] == [1, 2, 3, 4]
    assert {"loss", "grad_norm", "tokens_per_second", "step_time_seconds"} <= set(session.steps[0][1])


def test_init_from_takes_weights_only_and_own_checkpoints_win_on_restart(tmp_path):
    src = tmp_path / "pretrained"
    a = Trainer(make(tmp_path, "a", train={"steps": 4}, checkpoint={"uri": str(src), "async_mode": "disabled"}),
                session=ScriptedSession())
    try:
        pretrained = a.run()["checksum"]
    finally:
        a.close()

    own = tmp_path / "finetune"
    cfg = make(tmp_path, "b", train={"steps": 3, "seed": 99},
               checkpoint={"uri": str(own), "init_from": str(src), "async_mode": "disabled"})
    b = Trainer(cfg, session=ScriptedSession())
    try:
        ckpt, resumed = b.restore()
        assert resumed is None
        assert model_checksum(b.parts) == pretrained, "weights come from init_from"
        assert b.train_state.step == 0 and not b.optimizers[0].state, "fresh optimizer, step 0"
        ckpt.close()
        summary = b.run()
    finally:
        b.close()
    assert summary["step"] == 3 and summary["resumed_from"] is None

    cfg.train.steps = 5
    c = Trainer(cfg, session=ScriptedSession())
    try:
        ckpt, resumed = c.restore()
        ckpt.close()
    finally:
        c.close()
    assert resumed == 3, "a restart resumes the job's own checkpoint, not init_from"


def test_init_from_without_a_checkpoint_is_a_clear_error(tmp_path):
    t = Trainer(make(tmp_path, "x", checkpoint={"init_from": str(tmp_path / "empty")}), session=ScriptedSession())
    try:
        with pytest.raises(FileNotFoundError, match="checkpoint.init_from"):
            t.restore()
    finally:
        t.close()


def test_bad_config_exits_2_naming_the_field(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("parallel: {mode: zero9}\n")
    p = subprocess.run([sys.executable, "-m", "stoker.worker.train", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert "parallel.mode" in p.stderr and "zero3" in p.stderr


def test_parallel_modes_outside_torchrun_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(cfgmod.ConfigError, match="^parallel.mode: zero3 needs torchrun"):
        Trainer(make(tmp_path, "z", parallel={"mode": "zero3"}), session=ScriptedSession())
