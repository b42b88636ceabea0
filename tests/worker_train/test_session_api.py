"""The trainer's session interface: the SDK Session and every stand-in the tests and the
GPU check hand the trainer carry all of it; a stand-in that lacks a method is refused
when the trainer is built, by name (CI run 4: six trainer tests failed mid-run on a
stand-in without journal_commit)."""
from __future__ import annotations

import pytest

from bench.gpucheck.observe import RecordingSession
from stoker.worker.sdk import Session
from stoker.worker.session_api import METHODS, TrainerSession, check_session
from tests.worker_train.test_trainer_inprocess import ScriptedSession


@pytest.mark.parametrize("cls", [Session, ScriptedSession, RecordingSession])
def test_every_session_the_trainer_is_given_has_every_method(cls):
    missing = [m for m in METHODS if not callable(getattr(cls, m, None))]
    assert missing == [], f"{cls.__name__} lacks {missing}"


def test_a_session_lacking_a_method_is_refused_by_name():
    class Partial(ScriptedSession):
        journal_commit = None

    with pytest.raises(TypeError, match=r"Partial is not a trainer session: it lacks journal_commit"):
        check_session(Partial())
    assert isinstance(check_session(ScriptedSession()), TrainerSession)
