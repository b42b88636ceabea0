"""What a checkpoint holds: a short list of named parts, each ``Stateful``.

    model         ModelState      FQN-keyed weights (DTensor shards under FSDP,
                                  one stage's entries per pipeline rank)
    optimizer     OptimizerState  FQN-keyed, flattened AdamW state (param groups too)
    lr_scheduler  LRSchedule      optimizer steps done (warmup + cosine)
    dataloader    DistributedBatcher (data.py)  global sample position
    train_state   the Trainer     step, tokens seen, every rank's RNG states

Everything is keyed by parameter name and world-size independent, so DCP can load a
checkpoint into another world size or parallel layout.
"""
from __future__ import annotations

import math
import pickle
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions
from torch.distributed.checkpoint.stateful import Stateful

# Names of the checkpoint parts (stable: they are keys in stored checkpoints).
MODEL = "model"
OPTIMIZER = "optimizer"
LR_SCHEDULER = "lr_scheduler"
DATALOADER = "dataloader"
TRAIN_STATE = "train_state"

# Optimizer state keyed by parameter FQN (param groups too), so each pipeline stage /
# ZeRO partition saves and loads only its own entries and layouts can change on resume.
FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier for optimizer step ``step`` (1-based): linear warmup to 1 over
    ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / (total - warmup)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule(Stateful):
    """Sets each param group's lr = base_lr * lr_factor(next step)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], base_lr: float, *, warmup: int, total: int,
                 min_ratio: float):
        self.optimizers, self.base_lr = optimizers, base_lr
        self.kw = {"warmup": warmup, "total": total, "min_ratio": min_ratio}
        self.steps_done = 0
        self._apply()

    def current(self) -> float:
        return self.base_lr * lr_factor(self.steps_done + 1, **self.kw)

    def _apply(self) -> None:
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = self.current()

    def step(self) -> None:
        self.steps_done += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done = int(state["steps_done"])
        self._apply()


class ModelState(Stateful):
    def __init__(self, parts: list[nn.Module]):
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        out: dict[str, Any] = {}
        for part in self.parts:
            out.update(get_model_state_dict(part))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        for part in self.parts:
            set_model_state_dict(part, state, options=StateDictOptions(strict=False))


class OptimizerState(Stateful):
    """FQN-keyed optimizer state. Regular optimizers / FSDP go through
    ``get_optimizer_state_dict``; ZeroRedundancyOptimizer (not supported there)
    stores ``state.<fqn>.{step,exp_avg,exp_avg_sq}`` for the parameters this rank
    owns, which DCP also reshards (each rank reads its new partition)."""

    def __init__(self, parts: list[nn.Module], optimizers: list[torch.optim.Optimizer]):
        self.parts, self.optimizers = parts, optimizers

    def _zero(self):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        opt = self.optimizers[0]
        return opt if isinstance(opt, ZeroRedundancyOptimizer) else None

    def _zero_owned(self) -> dict[str, torch.Tensor]:
        zero = self._zero()
        module = self.parts[0].module if hasattr(self.parts[0], "module") else self.parts[0]
        by_id = self._zero_names = {id(p): n for n, p in module.named_parameters()}
        out = {}
        for group in zero.optim.param_groups:
            for p in group["params"]:
                st = zero.optim.state[p]
                if not st:  # not stepped yet: create the tensors DCP loads into
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                out[by_id[id(p)]] = st
        return out

    def state_dict(self) -> dict[str, Any]:
        if self._zero() is not None:
            return self._zero_state_dict()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        out: dict[str, Any] = {}
        for part, opt in zip(self.parts, self.optimizers):
            out.update(get_optimizer_state_dict(part, opt, options=FLAT))
        return out

    def _zero_state_dict(self) -> dict[str, Any]:
        """Same keys as the flattened format (state.<fqn>.*, param_groups.<fqn>.*),
        so ZeRO-1 checkpoints load into the other layouts and back."""
        zero = self._zero()
        owned = self._zero_owned()
        groups = {}
        for group in zero.optim.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                groups[self._zero_names[id(p)]] = dict(hyper)
        return {"state": {name: dict(st) for name, st in owned.items()}, "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._zero() is not None:
            for name, st in self._zero_owned().items():
                for k, v in state["state"][name].items():
                    if isinstance(st[k], torch.Tensor) and isinstance(v, torch.Tensor):
                        if st[k] is not v:
                            st[k].copy_(v)
                    else:
                        st[k] = v
            return
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        for part, opt in zip(self.parts, self.optimizers):
            set_optimizer_state_dict(part, opt, state, options=FLAT)


class TrainState(Stateful):
    """Step, tokens seen and every rank's RNG states (torch, numpy, python, cuda).

    RNG states of ALL ranks are gathered into one replicated blob (``capture`` is a
    collective, called before each save), so the checkpoint is the same on every
    rank; on load rank r takes entry r, and a rank beyond the saved world size
    reseeds from (seed, step, rank)."""

    def __init__(self, seed: int, rank: int, world: int):
        self.seed, self.rank, self.world = seed, rank, world
        self.step = 0
        self.tokens_seen = 0
        self._rng_blob = b""

    @staticmethod
    def _local_rng() -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def capture(self) -> None:
        mine = pickle.dumps(self._local_rng())
        if self.world > 1:
            everyone: list = [None] * self.world
            dist.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        self._rng_blob = pickle.dumps(everyone)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "rng": self._rng_blob}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        blob = state.get("rng") or b""
        self._rng_blob = blob
        saved = pickle.loads(blob) if blob else []
        if self.rank < len(saved):
            rng = pickle.loads(saved[self.rank])
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            seed_everything(self.seed + 7919 * self.step + self.rank)


def deterministic_algorithms_kwargs(device_type: str) -> dict[str, bool]:
    """Arguments for ``torch.use_deterministic_algorithms`` when ``train.deterministic`` is on.

    Strict on CUDA: the flash and memory-efficient attention backward kernels (SDPA) choose
    their deterministic algorithm only when ``warn_only`` is False; with ``warn_only=True``
    they warn once and keep the atomic-add kernel, so two runs (or a run and its resume)
    drift apart from the first backward pass. Strict mode instead raises on an op that has
    no deterministic kernel, naming it. On the CPU the model's ops are deterministic
    either way; warnings keep unusual user code running."""
    return {"mode": True, "warn_only": device_type != "cuda"}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def refuse_fresh_optimizers(state: dict[str, Any]) -> None:
    """DCP loads in place: a plain optimizer that has not stepped has no state tensors to load
    into, so its moments and step counts would silently stay empty. Refuse, naming the fix."""
    fresh = [k for k, v in state.items() if isinstance(v, torch.optim.Optimizer) and not v.state]
    if fresh:
        raise ValueError(
            f"state[{fresh[0]!r}] is a torch.optim.Optimizer that has not stepped yet: it has no state for the "
            f"checkpoint to load into, and its moments would silently stay empty. Pass "
            f"stoker.worker.state.OptimizerState([model], [optimizer]) under that key instead (it creates the "
            f"state first, keyed by parameter name, and works across world sizes)")
