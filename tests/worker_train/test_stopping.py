"""Ending before train.steps on purpose: a token budget and early stopping on a validation
plateau, in process (single rank, local checkpoints). The plateau's state survives a resume:
a run drained in the middle and resumed stops at the same step, bit-identical."""
from __future__ import annotations

from pathlib import Path

from stoker.worker.stopping import PLATEAU, TOKEN_BUDGET, Stopper
from stoker.worker.trainer import Trainer

from .test_trainer_inprocess import ScriptedSession, make

TOKENS_PER_STEP = 24 * 16   # harness: global_batch x seq_len


def run(tmp: Path, name: str, session=None, **sections) -> tuple[dict, ScriptedSession]:
    session = session or ScriptedSession()
    trainer = Trainer(make(tmp, name, **sections), session=session)
    try:
        return trainer.run(), session
    finally:
        trainer.close()


def test_a_token_budget_ends_training_succeeded_with_the_reason(tmp_path):
    summary, session = run(tmp_path, "budget", train={"steps": 50, "max_tokens": 5 * TOKENS_PER_STEP - 1})
    assert summary["step"] == 5 and summary["tokens_seen"] == 5 * TOKENS_PER_STEP
    assert summary["ended"].startswith(f"{TOKEN_BUDGET}: trained on {5 * TOKENS_PER_STEP} tokens")
    assert session.phases[-1] == "FINISHED" and session.reason == summary["ended"]


def test_early_stopping_on_a_plateau_survives_a_drain_and_resume_bit_identical(tmp_path):
    plateau = {"every": 2, "samples": 8, "patience": 2, "min_delta": 10.0}   # nothing improves by 10 nats
    straight, _ = run(tmp_path, "straight", train={"steps": 50}, validation=plateau)
    assert straight["step"] == 6 and straight["ended"].startswith(f"{PLATEAU}: validation loss did not improve")
    assert "best" in straight["ended"] and "at step 2" in straight["ended"]

    ckpt = {"uri": str(tmp_path / "ckpt"), "interval": 0, "async_mode": "disabled"}
    drained, _ = run(tmp_path, "drained", ScriptedSession(stop_at=4), train={"steps": 50}, validation=plateau,
                     checkpoint=ckpt)
    assert drained["step"] == 4 and drained["stopped_early"] and drained["ended"] is None
    resumed, _ = run(tmp_path, "resumed", train={"steps": 50}, validation=plateau, checkpoint=ckpt)
    assert resumed["resumed_from"] == 4 and resumed["step"] == 6
    assert resumed["checksum"] == straight["checksum"]


def test_the_stopper_forgets_validations_a_rollback_undid():
    s = Stopper(patience=2, min_delta=0.0)
    assert s.after_step(2, 0, 3.0) is None and s.after_step(4, 0, 3.5) is None
    s.adopt({"early_stopping": {"best": 3.0, "best_step": 2, "bad": 0}})
    assert s.after_step(4, 0, 3.6) is None          # one bad validation after the rollback, not two
    assert s.after_step(6, 0, 3.7).startswith(PLATEAU)
    s.adopt(None)
    assert (s.best, s.bad) == (None, 0)
