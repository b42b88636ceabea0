"""A canonical checksum of a model's parameters, independent of the parallel layout.

Each rank hashes the FULL tensors it can see (FSDP shards are gathered first,
pipeline stages hash their own parameters), the per-name digests are gathered,
and the checksum is sha256 over ``name|dtype|shape|digest`` lines in sorted name
order. Two runs have the same checksum iff every parameter is bit-identical.
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import nn


def tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    raw = t.view(torch.uint8) if t.numel() else t
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def full_model_state(part: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) model state dict; with FSDP only rank 0 of the shard group gets it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(part, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def local_digests(parts: list[nn.Module]) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    out = {}
    for part in parts:
        for name, t in full_model_state(part).items():
            out[name] = (str(t.dtype), str(tuple(t.shape)), tensor_digest(t))
    return out


def combine(digests: list[dict]) -> str:
    merged: dict[str, tuple] = {}
    for d in digests:
        for name, entry in d.items():
            if name in merged and tuple(merged[name]) != tuple(entry):
                raise RuntimeError(f"replicas disagree on parameter {name!r}: {merged[name]} vs {entry}")
            merged[name] = entry
    h = hashlib.sha256()
    for name in sorted(merged):
        dtype, shape, digest = merged[name]
        h.update(f"{name}|{dtype}|{shape}|{digest}\n".encode())
    return h.hexdigest()


def model_checksum(parts: list[nn.Module]) -> str:
    """Collective when torch.distributed is initialised (every rank must call it)."""
    mine = local_digests(parts)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        return combine(everyone)
    return combine([mine])
