"""Launch real trainer runs (torchrun on CPU/gloo) and read their outputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from stoker.devcluster.procs import descendants

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_TIMEOUT_S = 240


def base_config(tmp: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny-model config whose outputs go under tmp/name."""
    out = tmp / name
    out.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "model": {"size": "tiny"},
        "data": {"vocab_size": 64, "seq_len": 16, "train_samples": 512, "val_samples": 48},
        "train": {"seed": 1234, "steps": 6, "global_batch": 24, "micro_batch": 2, "lr": 3e-3,
                  "warmup_steps": 2, "num_threads": 1},
        "parallel": {"mode": "single"},
        "output": {"metrics_path": str(out / "metrics.jsonl"), "summary_path": str(out / "summary.json")},
    }
    for key, val in sections.items():
        cfg.setdefault(key, {}).update(val)
    return cfg


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for k in ("STOKER_CHECKPOINT_URI", "STOKER_CHECKPOINT_INTERVAL_STEPS", "STOKER_CHECKPOINT_KEEP",
              "STOKER_METRICS_PATH", "STOKER_OPERATOR_ADDR"):
        env.pop(k, None)
    return env


def command(cfg_path: Path, nproc: int) -> list[str]:
    # --standalone: a private c10d rendezvous on a free port the agent picks itself
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "stoker.worker.train", str(cfg_path)]


def write_config(tmp: Path, name: str, cfg: dict[str, Any]) -> Path:
    path = tmp / name / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def run(tmp: Path, name: str, cfg: dict[str, Any], nproc: int) -> dict[str, Any]:
    """Run to completion; return {"summary": ..., "metrics": [...], "seconds": ...}."""
    path = write_config(tmp, name, cfg)
    t0 = time.monotonic()
    proc = subprocess.run(command(path, nproc), cwd=tmp / name, env=_env(), capture_output=True, text=True,
                          timeout=TORCHRUN_TIMEOUT_S)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise AssertionError(f"{name}: torchrun exited {proc.returncode}\n--- stderr tail ---\n{proc.stderr[-6000:]}")
    return {**outputs(cfg), "seconds": took}


def outputs(cfg: dict[str, Any]) -> dict[str, Any]:
    summary = json.loads(Path(cfg["output"]["summary_path"]).read_text())
    return {"summary": summary, "metrics": read_metrics(cfg)}


def read_metrics(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(cfg["output"]["metrics_path"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(metrics: list[dict[str, Any]]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics if "loss" in m}


def stalled(cfg: dict[str, Any]) -> bool:
    """The run reached ``debug.stall_after_step`` and is idling (see trainer)."""
    return any(m.get("event") == "stalled" for m in read_metrics(cfg))


def run_until_then_kill9(tmp: Path, name: str, cfg: dict[str, Any], nproc: int, ready: Callable[[], bool],
                         timeout_s: float = TORCHRUN_TIMEOUT_S) -> float:
    """Start a run, wait until ``ready()``, then SIGKILL torchrun and every worker."""
    path = write_config(tmp, name, cfg)
    log = open(tmp / name / "stderr.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(command(path, nproc), cwd=tmp / name, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"{name}: exited {proc.returncode} before it was ready to be killed\n"
                                     f"{(tmp / name / 'stderr.log').read_text()[-6000:]}")
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"{name}: not ready to be killed after {timeout_s}s")
            time.sleep(0.2)
    finally:
        victims = [proc.pid] + descendants(proc.pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        log.close()
    return time.monotonic() - t0
