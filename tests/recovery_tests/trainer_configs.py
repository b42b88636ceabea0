"""The built-in trainer's job config for the recovery tests and benchmarks: a
tiny deterministic model, a checkpoint every 5 steps (async). Plain functions,
no pytest, so ``bench/`` can use them too."""
from __future__ import annotations

import json
import pathlib


def trainer_config(steps: int, **debug) -> dict:
    cfg = {
        "model": {"size": "tiny"},
        "data": {"vocab_size": 64, "seq_len": 16, "train_samples": 512, "val_samples": 16},
        "train": {"seed": 7, "steps": steps, "global_batch": 8, "micro_batch": 2, "lr": 3e-3,
                  "warmup_steps": 2, "num_threads": 1},
        "parallel": {"mode": "auto"},
        "checkpoint": {"interval": 5, "keep": 3, "async_mode": "async"},
    }
    if debug:
        cfg["debug"] = debug
    return cfg


def write_config(path: pathlib.Path, cfg: dict, out: pathlib.Path) -> pathlib.Path:
    cfg = json.loads(json.dumps(cfg))
    cfg["output"] = {"metrics_path": str(out / "metrics.jsonl"), "summary_path": str(out / "summary.json")}
    path.parent.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path
