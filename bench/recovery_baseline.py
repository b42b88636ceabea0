"""bench_recovery.py's baseline: the same trainer under plain ``torchrun --max-restarts=3``
(no Stoker), a rank SIGKILLed or SIGSTOPped, time until it trains again (if ever); and the
helpers the recovery benchmarks share (the trainer's config, finding a trainer, waiting)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stoker.devcluster.procs import argv_of, find_processes
from tests.recovery_tests.trainer_configs import trainer_config


def trainer_cfg(out: Path, steps: int, stall: int | None) -> dict:
    """The recovery tests' job (tests/recovery_tests/trainer_configs.py), its outputs under ``out``."""
    cfg = trainer_config(steps, **({"stall_after_step": stall} if stall is not None else {}))
    cfg["output"] = {"metrics_path": str(out / "metrics.jsonl"), "summary_path": str(out / "summary.json")}
    return cfg


def trainer_pid(pod_name: str | None = None, cmd_marker: str | None = None,
                local_rank: str | None = None) -> int | None:
    env = tuple(e.encode() for e in (f"STOKER_POD_NAME={pod_name}" if pod_name else "",
                                      f"LOCAL_RANK={local_rank}" if local_rank is not None else "") if e)
    for pid in find_processes(argv_has=b"stoker.worker.train",
                              argv_lacks=(b"stoker.operator.launch", b"torch.distributed.run"), env_has=env):
        if cmd_marker is None or any(cmd_marker.encode() in c for c in argv_of(pid) or []):
            return pid
    return None


def wait(what: str, fn, timeout: float, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def last_line_step(path: Path) -> tuple[float, int]:
    """(mtime, step of the last line) of a metrics file; (0, -1) if absent."""
    try:
        st = path.stat()
        lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
    except OSError:
        return 0.0, -1
    step = -1
    for ln in reversed(lines):
        try:
            step = int(json.loads(ln).get("step", -1))
            break
        except ValueError:
            continue
    return st.st_mtime, step


def torchrun_command(config: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of plain ``torchrun --standalone`` running the trainer on ``config`` over 2
    ranks on this host: nothing of Stoker's (no STOKER_ or AWS_ variable but those in ``env``)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *flags,
            "-m", "stoker.worker.train", str(config)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "AWS_"))}
    return argv, {**clean, **TORCHRUN_ENV, **(env or {})}


def _torchrun(out: Path, steps: int) -> subprocess.Popen:
    cfg = trainer_cfg(out, steps, None)
    cfg["checkpoint"]["uri"] = str(out / "ckpt")
    (out / "config.json").write_text(json.dumps(cfg))
    argv, env = torchrun_command(out / "config.json", "--max-restarts", "3", "--monitor-interval", "1")
    return subprocess.Popen(argv, cwd=out, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(out / "torchrun.log", "wb"), start_new_session=True)


# torchrun with its defaults never recovered a killed rank here: every restart's trainers failed in
# dist.new_group ("Gloo connectFullMesh failed ... Connection refused" to a port of the previous
# generation), the restarts were used up and torchrun exited (bench_recovery check run, 3 of 3
# restarts). With a rendezvous store per round (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, what Stoker's
# pods run with) it recovered (14.0 s at load 8). The baseline runs with it (recorded in the JSON).
TORCHRUN_ENV = {"OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _committed(ckpt: Path) -> int:
    steps = [int(d.name.split("-")[1]) for d in ckpt.glob("step-*") if (d / "COMMITTED").exists()]
    return max(steps, default=0)


def _kill_tree(proc: subprocess.Popen) -> None:
    """torchrun and its workers (which run in sessions of their own)."""
    kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in [proc.pid, *map(int, kids)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _torchrun_fault(out: Path, sig: int, recovered, cap: float, interval: float = 0.05) -> float | None:
    """Plain torchrun on the trainer; at step 15 ``sig`` to rank 1; seconds until
    ``recovered(t0, committed_step, step_at_fault, mtime, step)`` holds for the metrics file's
    last line (None: not within ``cap``)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = _torchrun(out, 300)
    metrics = out / "metrics.jsonl"
    try:
        wait("step 15", lambda: last_line_step(metrics)[1] >= 15, 300)
        pid = wait("rank 1", lambda: trainer_pid(cmd_marker=str(out / "config.json"), local_rank="1"), 30)
        resumed = _committed(out / "ckpt")
        t0 = time.time()
        os.kill(pid, sig)
        _, stuck = last_line_step(metrics)
        try:
            wait("recovery", lambda: recovered(t0, resumed, stuck, *last_line_step(metrics)), cap, interval)
        except TimeoutError:
            return None
        return time.time() - t0
    finally:
        _kill_tree(proc)


def torchrun_crash(tmp: Path, i: int, cap: float) -> dict:
    """SIGKILL one rank under plain torchrun --max-restarts=3; time until training resumes."""
    rec = _torchrun_fault(tmp / f"tr-crash-{i}", signal.SIGKILL,
                          lambda t0, resumed, _stuck, m, s: m > t0 + 0.5 and resumed < s <= resumed + 5, cap)
    return {"kind": "crash", "recover_s": rec, "watched_s": cap}


def torchrun_hang(tmp: Path, cap: float) -> dict:
    """SIGSTOP one rank under plain torchrun and watch for recovery for ``cap`` seconds."""
    rec = _torchrun_fault(tmp / "tr-hang", signal.SIGSTOP,
                          lambda t0, _resumed, stuck, m, s: m > t0 + 1 and s != stuck, cap, 0.2)
    return {"kind": "hang", "recover_s": rec, "watched_s": cap}
