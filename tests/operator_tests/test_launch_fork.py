"""The launcher starts trainers with a Python preexec_fn (tie_workers) while it holds a gRPC
channel (launch_inplace's reports). With gRPC's fork handlers on, a child could abort before
exec (SIGABRT: "Epoll1Poller ... epoll_wait error: Bad file descriptor"): a trainer lost at
start, which the operator counted as a fault (CI, 2026-12-04: an in-place restart nobody caused).
Without the setting this test saw 355, 324 and 332 of 1500 starts abort (two busy cores); with it
0 (and 0 of 3000 in a plain loop that aborted 4 of 1000 without)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
SCRIPT = Path(__file__).parent / "scripts" / "tied_starts.py"


def starts(mode: str, n: int) -> dict:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        out = subprocess.run([sys.executable, SCRIPT, mode, str(n)], capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in __import__("os").environ.items() if not k.startswith("GRPC_")})
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_trainers_started_beside_a_live_grpc_channel_do_not_abort():
    got = starts("launcher", 1500)
    assert got["bad"] == [], f"{len(got['bad'])} of {got['starts']} trainer starts failed: {got['bad']}"


def test_the_pods_own_fork_support_setting_is_left_alone():
    from stoker.operator import launch

    env = {"GRPC_ENABLE_FORK_SUPPORT": "1"}
    assert launch.no_grpc_fork_handlers(env) is False and env["GRPC_ENABLE_FORK_SUPPORT"] == "1"
    env = {}
    assert launch.no_grpc_fork_handlers(env) is True and env["GRPC_ENABLE_FORK_SUPPORT"] == "0"


def test_a_frozen_trainer_stopped_by_torchrun_exits_at_once_not_after_its_30_s_wait(tmp_path):
    """Chaos (seed 499472377): a trainer killed and its peer SIGSTOPped 0-2 s later trained again after
    32 s: torchrun's agent stopped the frozen peer with SIGTERM, which a stopped process never sees,
    and waited its 30 s for SIGKILL. A real process, torch's own handler, the launcher's patch."""
    import signal
    import time

    from stoker.operator import launch
    from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler as h

    def stop_frozen() -> float:
        # a Python process, as a trainer is
        out = tmp_path / f"out-{time.monotonic_ns()}"
        proc = h.SubprocessHandler(sys.executable, ("-c", "import time; print('up', flush=True); time.sleep(60)"),
                                   env={}, stdout=str(out), stderr=None, local_rank_id=0, numa_options=None)
        while not (out.exists() and out.read_text() == "up\n"):
            time.sleep(0.02)
        proc.proc.send_signal(signal.SIGSTOP)
        while open(f"/proc/{proc.proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)   # stopped
        t0 = time.monotonic()
        proc.close(signal.SIGTERM)
        try:
            proc.proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.proc.kill()
            proc.proc.wait()
            return float("inf")
        return time.monotonic() - t0

    original = h.SubprocessHandler.close
    try:
        assert stop_frozen() == float("inf")     # as torch does it: the SIGTERM waits for a SIGCONT
        assert launch.wake_on_close() and launch.wake_on_close()   # again: not stacked
        assert stop_frozen() < 2.0
    finally:
        h.SubprocessHandler.close = original
