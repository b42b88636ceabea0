"""The step journal (stoker.worker.journal): what the e2e tests and bench/chaos.py read
to count computed and recomputed steps. It must keep every record of every process,
survive a SIGKILL right after a step, and never be rewritten by a restarted worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from stoker.common import env
from stoker.worker import journal
from stoker.worker.sdk import Session


def test_every_process_appends_to_a_file_of_its_own_and_nothing_is_rewritten(tmp_path):
    s1 = Session.from_env({env.STEP_JOURNAL_DIR: str(tmp_path), env.JOB_NAME: "j", env.POD_NAME: "j-worker-0-0"})
    for step in (1, 2, 3):
        s1.step(step, loss=1.0)
    s1.report_checkpoint(type("R", (), {"step": 2, "ok": True, "duration_s": 0.1, "bytes": 1, "error": ""})())
    s1.close()
    # a "restarted" worker resuming at 2 recomputes step 3: both computations stay on record
    s2 = Session.from_env({env.STEP_JOURNAL_DIR: str(tmp_path), env.JOB_NAME: "j", env.POD_NAME: "j-worker-0-1",
                           env.INCARNATION: "1"})
    s2.set_last_committed_step(2)
    s2.step(3)
    s2.close()
    recs = journal.read(tmp_path)
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert [(r["incarnation"], r["event"], r["step"]) for r in recs] == [
        (0, "step", 1), (0, "step", 2), (0, "step", 3), (0, "checkpoint", 2), (1, "resumed", 2), (1, "step", 3)]
    assert [key[0] for key, _ in journal.processes(recs)] == [0, 1]


def test_a_step_is_on_record_even_when_the_process_is_sigkilled_right_after(tmp_path):
    code = ("import os, signal, sys; from stoker.worker.sdk import Session; "
            "s = Session.from_env(); s.step(7); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, env.STEP_JOURNAL_DIR: str(tmp_path)})
    assert proc.returncode == -signal.SIGKILL
    assert [r["step"] for r in journal.read(tmp_path)] == [7]


def test_without_the_variable_there_is_no_journal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Session.from_env({})
    s.step(1)
    s.close()
    assert list(tmp_path.iterdir()) == []
