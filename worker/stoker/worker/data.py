"""Deterministic synthetic data and a world-size-independent, resumable sampler.

Dataset: sample ``i`` of a split is a token sequence generated only from
``(seed, split, i)`` by a noisy permutation process — token t+1 is ``perm[token t]``
with probability ``1 - noise``, else uniform. A model can learn it (the loss falls
towards the process entropy), and any sample can be produced on any rank without
materialising the dataset.

Order: the GLOBAL sample order is a per-epoch permutation of the train split,
fixed by the seed. Optimizer step k consumes global positions ``[k*B, (k+1)*B)``
whatever the world size; data-parallel rank r of D takes the contiguous slice
``[r*B/D, (r+1)*B/D)`` of each global batch and splits it into micro-batches of m,
so gradient accumulation is ``B/(D*m)``. The sampler's state is just the global
position, so a checkpoint taken at one world size resumes at any other.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterator

import numpy as np
import torch

TRAIN, VAL = 0, 1
PREFETCH_STEPS = 4  # a sharded dataset starts fetching this many steps' shards on open and on restore


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    seed: int
    vocab_size: int
    seq_len: int
    train_samples: int
    val_samples: int
    noise: float = 0.1


class SyntheticLM:
    """Token sequences of length seq_len + 1 (inputs are [:-1], targets [1:])."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        self.perm = np.random.default_rng([spec.seed, 7]).permutation(spec.vocab_size)

    def size(self, split: int) -> int:
        return self.spec.train_samples if split == TRAIN else self.spec.val_samples

    def samples(self, split: int, ids: list[int] | np.ndarray) -> torch.Tensor:
        """(len(ids), seq_len + 1) int64 tokens; vectorised over the batch."""
        s = self.spec
        n, length = len(ids), s.seq_len + 1
        first = np.empty(n, dtype=np.int64)
        noise_mask = np.empty((n, length), dtype=bool)
        random_tok = np.empty((n, length), dtype=np.int64)
        for j, i in enumerate(ids):
            rng = np.random.default_rng([s.seed, split, int(i)])
            first[j] = rng.integers(s.vocab_size)
            noise_mask[j] = rng.random(length) < s.noise
            random_tok[j] = rng.integers(s.vocab_size, size=length)
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = first
        for t in range(1, length):
            out[:, t] = np.where(noise_mask[:, t], random_tok[:, t], self.perm[out[:, t - 1]])
        return torch.from_numpy(out)

    def entropy_floor(self) -> float:
        """Per-token cross-entropy of the true process (nats): the best loss possible."""
        p, v = self.spec.noise, self.spec.vocab_size
        p_hit = 1 - p + p / v
        return -(p_hit * math.log(p_hit) + (v - 1) * (p / v) * math.log(p / v)) if p > 0 else 0.0


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of dataset ids for one epoch (cached: large datasets reuse it every step)."""
    order = np.random.default_rng([seed, 11, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def global_sample_ids(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Dataset ids at global positions [start, start+count) (crossing epochs as needed)."""
    out = np.empty(count, dtype=np.int64)
    pos, filled = start, 0
    while filled < count:
        epoch, off = divmod(pos, n)
        take = min(count - filled, n - off)
        out[filled:filled + take] = epoch_order(seed, epoch, n)[off:off + take]
        filled += take
        pos += take
    return out


def grad_accum_steps(global_batch: int, dp_degree: int, micro_batch: int) -> int:
    """Micro-batches per rank per optimizer step; raises naming the fields if uneven."""
    if global_batch % (dp_degree * micro_batch) != 0:
        raise ValueError(
            f"train.global_batch ({global_batch}) must be divisible by data-parallel degree ({dp_degree}) "
            f"x train.micro_batch ({micro_batch}); change global_batch or micro_batch")
    return global_batch // (dp_degree * micro_batch)


def rank_slice(global_batch: int, dp_degree: int, dp_rank: int) -> tuple[int, int]:
    per = global_batch // dp_degree
    return dp_rank * per, (dp_rank + 1) * per


class DistributedBatcher:
    """Yields, per optimizer step, this DP rank's micro-batches as (inputs, targets).

    Stateful: ``state_dict()`` is the global sample position (and the epoch it is in),
    identical on every rank and independent of world size.
    """

    def __init__(self, data: SyntheticLM, *, global_batch: int, micro_batch: int,
                 dp_degree: int, dp_rank: int, order_seed: int):
        self.data = data
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.dp_degree = dp_degree
        self.dp_rank = dp_rank
        self.order_seed = order_seed
        self.accum = grad_accum_steps(global_batch, dp_degree, micro_batch)
        self.position = 0  # global samples consumed so far
        # Half-open global sample ranges never trained on (health rollbacks skip a poisoned
        # window): a batch that would start inside one starts at its end instead.
        self.skips: list[tuple[int, int]] = []
        self.last_batch_start = 0
        self._prefetch(0, PREFETCH_STEPS)  # a sharded dataset starts on the first steps now, before the model is built

    def _prefetch(self, position: int, steps: int = 1) -> None:
        """Sharded datasets: start fetching the shards of this rank's batches of ``steps`` steps
        from ``position`` on, in the order they are read."""
        hook = getattr(self.data, "prefetch", None)
        if hook is not None:
            hook(np.concatenate([self.local_ids(position + k * self.global_batch) for k in range(steps)]))

    def local_ids(self, position: int) -> np.ndarray:
        ids = global_sample_ids(self.order_seed, self.data.size(TRAIN), position, self.global_batch)
        lo, hi = rank_slice(self.global_batch, self.dp_degree, self.dp_rank)
        return ids[lo:hi]

    def next_batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        for lo, hi in self.skips:  # sorted and merged (health.merge_ranges)
            if lo <= self.position < hi:
                self.position = hi
        self.last_batch_start = self.position
        getattr(self.data, "at_position", lambda p: None)(self.position)  # sharded datasets' sample log
        tokens = self.data.samples(TRAIN, self.local_ids(self.position))
        self.position += self.global_batch
        self._prefetch(self.position)
        return [(mb[:, :-1], mb[:, 1:]) for mb in tokens.split(self.micro_batch)]

    def __iter__(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"sample_index": self.position, "epoch": self.position // self.data.size(TRAIN)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["sample_index"])
        self._prefetch(self.position, PREFETCH_STEPS)  # the resumed steps' shards, while the rest of it loads


def validation_batches(data: SyntheticLM, *, n_samples: int, batch: int, dp_degree: int,
                       dp_rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed held-out set: val ids [0, n_samples), this DP rank's contiguous share."""
    if n_samples % (dp_degree * batch) != 0:
        raise ValueError(f"validation.samples ({n_samples}) must be divisible by data-parallel degree "
                         f"({dp_degree}) x train.micro_batch ({batch})")
    per = n_samples // dp_degree
    ids = np.arange(dp_rank * per, (dp_rank + 1) * per)
    tokens = data.samples(VAL, ids)
    return [(mb[:, :-1], mb[:, 1:]) for mb in tokens.split(batch)]
