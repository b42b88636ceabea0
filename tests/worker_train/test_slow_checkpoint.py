"""``debug.slow_checkpoint_at_step``: the save of that step stores its shards and
DCP metadata, then holds back its commit (so a test can kill a worker while the
checkpoint is half written) - in a fresh run only, never in one that resumed."""
from __future__ import annotations

import time as real_time
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from stoker.common import layout  # noqa: E402
from stoker.worker import config as cfgmod  # noqa: E402
from stoker.worker import checkpoint_hooks as hooks_mod  # noqa: E402
from stoker.worker.checkpoint_hooks import slow_checkpoint_due  # noqa: E402
from stoker.worker.trainer import Trainer  # noqa: E402

from . import harness as h  # noqa: E402
from .test_trainer_inprocess import ScriptedSession  # noqa: E402

pytestmark = pytest.mark.torch

CKPT = {"uri": "/tmp/unused", "interval": 5}


def debug_cfg(steps: int = 20, checkpoint: dict | None = None, **debug) -> dict:
    return {"train": {"steps": steps, "warmup_steps": 0}, "checkpoint": checkpoint or CKPT, "debug": debug}


AT, SECONDS = "debug.slow_checkpoint_at_step", "debug.slow_checkpoint_seconds"


@pytest.mark.parametrize("raw, field, message", [
    (debug_cfg(slow_checkpoint_at_step=10, checkpoint={"interval": 5}), AT, "needs checkpoint.uri"),
    (debug_cfg(slow_checkpoint_at_step=7), AT, "step 7 is not a checkpoint step (checkpoint.interval=5"),
    (debug_cfg(slow_checkpoint_at_step=25), AT, "must be in [1, train.steps=20], got 25"),
    (debug_cfg(slow_checkpoint_at_step=0), AT, "must be in [1, train.steps=20], got 0"),
    (debug_cfg(slow_checkpoint_at_step="ten"), AT, "expected an integer"),
    (debug_cfg(slow_checkpoint_seconds=5), SECONDS, "only used with debug.slow_checkpoint_at_step"),
    (debug_cfg(slow_checkpoint_at_step=10, slow_checkpoint_seconds=0), SECONDS, "must be > 0, got 0"),
    (debug_cfg(slow_checkpoint_at_step=10, slow_checkpoint_seconds="long"), SECONDS, "expected a number"),
])
def test_bad_slow_checkpoint_settings_name_the_field_and_the_fix(raw, field, message):
    with pytest.raises(cfgmod.ConfigError) as err:
        cfgmod.from_dict(raw, environ={})
    assert str(err.value).startswith(field), str(err.value)
    assert message in str(err.value)


def test_slow_checkpoint_at_an_interval_step_or_the_last_step_is_accepted():
    ok = cfgmod.from_dict(debug_cfg(slow_checkpoint_at_step=10, slow_checkpoint_seconds=2.5), environ={})
    assert (ok.debug.slow_checkpoint_at_step, ok.debug.slow_checkpoint_seconds) == (10, 2.5)
    last = cfgmod.from_dict(debug_cfg(steps=7, checkpoint={"uri": "/x", "interval": 0}, slow_checkpoint_at_step=7),
                            environ={})
    assert last.debug.slow_checkpoint_at_step == 7
    # the operator's interval (environment) is the one that counts
    env = {"STOKER_CHECKPOINT_URI": "s3://b/j", "STOKER_CHECKPOINT_INTERVAL_STEPS": "3"}
    assert cfgmod.from_dict(debug_cfg(slow_checkpoint_at_step=9, checkpoint={}), environ=env)
    with pytest.raises(cfgmod.ConfigError, match="checkpoint.interval=3"):
        cfgmod.from_dict(debug_cfg(slow_checkpoint_at_step=10, checkpoint={}), environ=env)


def test_slow_checkpoint_fires_at_its_step_of_a_fresh_run_only():
    debug = cfgmod.DebugConfig(slow_checkpoint_at_step=10)
    assert slow_checkpoint_due(debug, 10, resumed_from=None)
    assert not slow_checkpoint_due(debug, 5, resumed_from=None)
    assert not slow_checkpoint_due(debug, 15, resumed_from=None)
    # the recovered incarnation redoes step 10 and must commit it
    assert not slow_checkpoint_due(debug, 10, resumed_from=5)
    assert not slow_checkpoint_due(debug, 10, resumed_from=0)
    assert not slow_checkpoint_due(cfgmod.DebugConfig(), 10, resumed_from=None)


class SleepRecorder:
    """Stands in for the checkpoint hooks' ``time`` (the trainer's before_commit hook): records what the checkpoint of
    step 4 looked like in storage while the trainer held its commit back."""

    def __init__(self, ckpt: Path):
        self.ckpt, self.calls = ckpt, []

    def __getattr__(self, name):
        return getattr(real_time, name)

    def sleep(self, seconds):
        d = self.ckpt / layout.step_dir(4)
        self.calls.append(SimpleNamespace(seconds=seconds, files={p.name for p in d.iterdir()}))


def run_trainer(tmp: Path, name: str, steps: int, ckpt: Path, **debug) -> dict:
    raw = h.base_config(tmp, name, train={"steps": steps},
                        checkpoint={"uri": str(ckpt), "interval": 2, "async_mode": "async"}, debug=debug)
    trainer = Trainer(cfgmod.from_dict(raw, environ={}), session=ScriptedSession())
    try:
        return trainer.run()
    finally:
        trainer.close()


def test_the_commit_is_held_back_after_shards_and_metadata_are_stored_then_done(tmp_path, monkeypatch, caplog):
    ckpt = tmp_path / "ckpt"
    recorder = SleepRecorder(ckpt)
    monkeypatch.setattr(hooks_mod, "time", recorder)
    caplog.set_level("WARNING", logger="stoker.worker.trainer")
    summary = run_trainer(tmp_path, "fresh", 6, ckpt, slow_checkpoint_at_step=4, slow_checkpoint_seconds=0.5)
    [call] = recorder.calls
    assert call.seconds == 0.5
    assert layout.DCP_METADATA in call.files and any(f.endswith(".distcp") for f in call.files), call.files
    assert layout.COMMIT_MARKER not in call.files and layout.MANIFEST not in call.files, call.files
    assert any("checkpoint.slow_write step=4" in r.getMessage() for r in caplog.records)
    # a slow checkpoint is still a checkpoint: it commits once the hold is over
    assert summary["step"] == 6
    assert (ckpt / layout.step_dir(4) / layout.COMMIT_MARKER).exists()


def test_a_resumed_run_redoing_the_step_commits_it_without_holding_back(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    run_trainer(tmp_path, "first", 2, ckpt)  # commits step 2
    recorder = SleepRecorder(ckpt)
    monkeypatch.setattr(hooks_mod, "time", recorder)
    summary = run_trainer(tmp_path, "resumed", 6, ckpt, slow_checkpoint_at_step=4)
    assert summary["resumed_from"] == 2 and summary["step"] == 6
    assert recorder.calls == []
    assert (ckpt / layout.step_dir(4) / layout.COMMIT_MARKER).exists()
