"""The exact step of a failure: each trainer's Session keeps its last completed step in a
file of its own, the launcher names it in its exit line, the operator reads it from the
termination message; a step known only from a heartbeat is marked approximate and never
counts towards "the same failure at the same step" (bench/chaos.py, seed 595289532:
SIGKILLs at steps 9, 10 and 15 all read "step 10" from heartbeats, and a healthy job was
charged a user error)."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from stoker.common import last_step
from stoker.operator import detection as D
from stoker.operator import incidents as I
from stoker.operator import recovery as R
from stoker.operator.podview import pod_view

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)


def test_the_last_step_survives_a_sigkill_of_its_writer(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        from stoker.common import last_step
        w = last_step.open_writer({str(tmp_path)!r}, 3)
        for step in range(12):
            w.write(step)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert last_step.read(tmp_path, 3) == 11
    assert last_step.read(tmp_path, 0) is None and last_step.read(None, 3) is None
    assert last_step.open_writer(str(tmp_path / "missing"), 0) is None   # never fails the trainer


def test_the_exit_line_names_the_step_and_the_operator_reads_it_back():
    line = last_step.exit_line(1, -9, 137, 42)
    assert line == "stoker launch: worker rank 1 exited with -9; exiting 137; its last completed step was 42"
    assert last_step.step_of("Traceback ...\nValueError: boom\n" + line + "\n") == 42
    assert last_step.step_of(last_step.exit_line(1, 1, 1, None)) is None
    assert last_step.step_of("its last completed step was 42") is None   # only the launcher's own line


def _failed_pod(message: str) -> dict:
    return {"metadata": {"name": "j-worker-1-2", "labels": {"stoker.dev/replica-index": "1",
                                                           "stoker.dev/incarnation": "2"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "trainer"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                "exitCode": 137, "finishedAt": "2026-12-02T11:59:59Z", "message": message}}}]}}


def _rank(step: int) -> D.RankProgress:
    return D.RankProgress(rank=1, incarnation=2, step=step, last_seen=0.0, advanced_at=0.0, pod_name="j-worker-1-2",
                          node_name="n1")


def test_a_launcher_named_step_beats_the_heartbeat_and_is_exact():
    pod = pod_view(_failed_pod(last_step.exit_line(1, -9, 137, 15)))
    assert pod.last_step == 15 and "stoker launch" not in pod.message
    f = D._with_rank(D.classify_pod(pod, None, node_known=False), [_rank(10)])
    assert (f.cause, f.step, f.step_exact) == (D.WORKER_KILLED, 15, True)
    assert "stepApproximate" not in I.record(f, kind="Restart", budget="infrastructure", incarnation=2, now=NOW)


def test_without_the_launcher_line_the_step_is_the_heartbeat_s_and_marked_approximate():
    pod = pod_view(_failed_pod(""))   # the whole pod was SIGKILLed: the launcher said nothing
    f = D._with_rank(D.classify_pod(pod, None, node_known=False), [_rank(10)])
    assert (f.step, f.step_exact) == (10, False)
    inc = I.record(f, kind="Restart", budget="infrastructure", incarnation=2, now=NOW)
    assert inc["step"] == 10 and inc["stepApproximate"] is True


def test_chaos_18_three_kills_read_as_step_10_from_heartbeats_are_not_a_user_error():
    f = D.Finding(D.WORKER_KILLED, "killed", pod="p", exit_code=137, step=10, step_exact=False)
    hist = [I.record(f, kind="Restart", budget="infrastructure", incarnation=i, now=NOW)
            for i in (1, 2)]
    a = R.decide(f, {}, hist, R.Policy(repeat_limit=3))
    assert a.finding.cause == D.WORKER_KILLED and not a.counted
    # The same three failures with exact steps are the user's (a deterministic kill at step 10).
    exact = [{**h, "stepApproximate": False} for h in hist]
    a = R.decide(D.Finding(D.WORKER_KILLED, "killed", pod="p", exit_code=137, step=10), {}, exact,
                 R.Policy(repeat_limit=3))
    assert a.finding.cause == D.USER_ERROR and a.counted
    # An approximate incident in between breaks the run of exact ones.
    assert R.repeats([exact[0], hist[1]], D.Finding(D.WORKER_KILLED, "k", exit_code=137, step=10)) == 1


SCRIPT = textwrap.dedent("""
    import os, signal, time
    from stoker.worker.sdk import Session
    with Session.from_env() as s:
        for step in range(20):
            time.sleep(0.05)
            if step == 8 and os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGKILL)   # in the middle of step 8
            s.step(step)
""")


@pytest.mark.torch
def test_the_launcher_names_the_step_a_sigkilled_trainer_last_completed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
    proc = subprocess.run([sys.executable, "-m", "stoker.operator.launch", "--standalone", "--nproc-per-node", "2",
                           str(script)], env={**env, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert last_step.step_of(proc.stderr) == 7, proc.stderr[-3000:]
    assert not [p for p in tmp.iterdir() if p.name.startswith("stoker-steps-")]   # the launcher cleans up
