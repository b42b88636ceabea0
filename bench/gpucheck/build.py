"""Sizes of each check (the H200 profile and the --tiny CPU one), trainer configs
built from them, and the single-rank process group the FSDP modes need."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from typing import Any, Iterator

from bench.common import free_port


@dataclasses.dataclass(frozen=True)
class Profile:
    size: str
    vocab_size: int
    seq_len: int
    # throughput: one trainer, several variants, each warmup + timed optimizer steps
    tp_micro: int
    tp_global: int
    tp_warmup: int
    tp_steps: int
    # FSDP2 with / without CPU offload
    fsdp_micro: int
    fsdp_steps: int
    # async checkpoint + exact resume (children)
    ck_micro: int
    ck_steps: int
    ck_interval: int
    # peak matmul
    peak_sizes: tuple[int, ...]
    peak_iters: int
    peak_trials: int
    num_threads: int | None = None


GPU = Profile(size="1b", vocab_size=50304, seq_len=2048,
              tp_micro=16, tp_global=32, tp_warmup=2, tp_steps=6,
              fsdp_micro=4, fsdp_steps=4,
              ck_micro=4, ck_steps=6, ck_interval=3,
              peak_sizes=(8192, 16384), peak_iters=20, peak_trials=5)
TINY = Profile(size="tiny", vocab_size=64, seq_len=32,
               tp_micro=2, tp_global=4, tp_warmup=1, tp_steps=3,
               fsdp_micro=2, fsdp_steps=4,
               ck_micro=2, ck_steps=6, ck_interval=3,
               peak_sizes=(256,), peak_iters=3, peak_trials=3, num_threads=1)


def train_config(profile: Profile, *, micro: int, global_batch: int, steps: int, mode: str = "single",
                 bf16: bool, lr: float = 6e-4, warmup: int = 0, deterministic: bool = True,
                 cpu_offload: bool = False, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw trainer config (what ``stoker.worker.config.from_dict`` validates)."""
    raw: dict[str, Any] = {
        "model": {"size": profile.size},
        "data": {"vocab_size": profile.vocab_size, "seq_len": profile.seq_len,
                 "train_samples": max(4096, global_batch), "val_samples": 64},
        "train": {"seed": 1234, "steps": steps, "global_batch": global_batch, "micro_batch": micro, "lr": lr,
                  "warmup_steps": warmup, "deterministic": deterministic, "num_threads": profile.num_threads},
        "parallel": {"mode": mode, "bf16": bf16, "cpu_offload": cpu_offload},
    }
    if checkpoint:
        raw["checkpoint"] = checkpoint
    return raw


def make_trainer(raw: dict[str, Any], session):
    from stoker.worker import config
    from stoker.worker.trainer import Trainer

    return Trainer(config.from_dict(raw, environ={}), session=session)


@contextlib.contextmanager
def single_rank_env() -> Iterator[None]:
    """RANK/WORLD_SIZE/... of a one-process torchrun, so the trainer's FSDP modes
    initialise a (one-rank) process group; restored afterwards."""
    values = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
