"""Parallelism as plain functions over a model (or a list of model parts).

- ``ParallelDims``: pipeline x data-parallel degrees; builds the DeviceMesh (rebuild
  it after every rendezvous — it is derived from the current world size).
- ``apply_ddp``      plain data parallel (DistributedDataParallel).
- ``apply_zero1``    DDP + ZeroRedundancyOptimizer (optimizer state sharded).
- ``apply_fsdp``     FSDP2 ``fully_shard``: ZeRO-2 (reshard_after_forward=False:
                     grads + optimizer sharded, params kept gathered between forward
                     and backward) or ZeRO-3 (True: parameters sharded too).
- ``pipeline_model`` torch.distributed.pipelining stages built by hand (each rank
                     builds only its stage) + ScheduleGPipe / Schedule1F1B; composes
                     with data parallelism over the "dp" mesh dimension.
- ``apply_ac``       activation checkpointing per transformer block.
- ``clip_grad_norm_`` global grad-norm clipping that is correct for FSDP (DTensor
                     grads) and pipelines (norm summed over stages).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from stoker.worker.model import GPT, ModelArgs, prune_to_stage


@dataclasses.dataclass(frozen=True)
class ParallelDims:
    pp: int
    dp: int
    world_size: int

    def __post_init__(self) -> None:
        if self.pp * self.dp != self.world_size:
            raise ValueError(f"parallel.pp ({self.pp}) x parallel.dp ({self.dp}) != world size ({self.world_size})")

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    def build_mesh(self, device_type: str) -> DeviceMesh:
        """2-D ("pp", "dp") mesh; ranks of one pipeline are dp-strided, so the
        ranks of one data-parallel group hold the same stage."""
        return init_device_mesh(device_type, (self.pp, self.dp), mesh_dim_names=("pp", "dp"))


def device_for_rank(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def build_model(args: ModelArgs, seed: int, device: torch.device, *, stage: int | None = None,
                n_stages: int = 1) -> GPT:
    """Construct on the meta device, keep only this pipeline stage's parts (if any),
    materialise on ``device`` and initialise deterministically from ``seed``."""
    with torch.device("meta"):
        model = GPT(args)
    if stage is not None:
        prune_to_stage(model, stage, n_stages)
    model.to_empty(device=device)
    if args.tie_embeddings and model.head is not None and model.tok_emb is not None:
        model.head.weight = model.tok_emb.weight
    model.init_weights(seed)
    return model


def apply_ac(model: nn.Module) -> None:
    """Recompute each block's activations in backward (names/FQNs unchanged)."""
    for layer in model.layers.values():
        layer.activation_checkpointing = True


def apply_ddp(model: nn.Module, mesh: DeviceMesh, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               process_group=mesh.get_group("dp"))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices/embeddings get weight decay; LayerNorm weights and biases don't."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def apply_zero1(model: nn.Module, mesh: DeviceMesh, *, lr: float, betas: tuple[float, float],
                weight_decay: float) -> torch.optim.Optimizer:
    """ZeRO-1: each rank keeps AdamW state only for its partition of parameters
    (model must already be DDP-wrapped: gradients are all-reduced as usual)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    groups = param_groups(model, weight_decay)
    zero = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW,
                                   process_group=mesh.get_group("dp"), lr=lr, betas=betas,
                                   weight_decay=weight_decay, foreach=False)
    zero.add_param_group(groups[1])
    return zero


def apply_fsdp(model: GPT, mesh: DeviceMesh, *, reshard_after_forward: bool, cpu_offload: bool = False,
               mixed_precision: bool = False) -> GPT:
    """FSDP2 per block and at the root. ZeRO-2: reshard_after_forward=False,
    ZeRO-3: True. bf16 params for compute, fp32 gradient reduction."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if mixed_precision else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    dp_mesh = mesh["dp"]
    for layer in model.layers.values():
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp,
                    offload_policy=offload)
    # the root keeps embeddings/head; no point resharding it right before backward
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=False, mp_policy=mp, offload_policy=offload)
    return model


def pipeline_model(args: ModelArgs, seed: int, mesh: DeviceMesh, device: torch.device, *, schedule: str,
                   n_microbatches: int, loss_fn: Callable, activation_checkpointing: bool = False):
    """Build this rank's pipeline stage (one stage per rank) and the schedule.

    Returns ``(schedule, model_parts)``; ``model_parts`` is a list with this rank's
    stage module, whose parameter names are those of the full model.
    """
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    pp_mesh = mesh["pp"]
    n_stages = pp_mesh.size()
    stage_idx = pp_mesh.get_local_rank()
    part = build_model(args, seed, device, stage=stage_idx, n_stages=n_stages)
    if activation_checkpointing:
        apply_ac(part)
    stage = PipelineStage(part, stage_idx, n_stages, device, group=pp_mesh.get_group())
    cls = {"pipeline-gpipe": ScheduleGPipe, "pipeline-1f1b": Schedule1F1B}[schedule]
    sched = cls(stage, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=True)
    sched.stage_index = stage_idx
    sched.is_first = stage_idx == 0
    sched.is_last = stage_idx == n_stages - 1
    return sched, [part]


def allreduce_grads(params: list[nn.Parameter], group: dist.ProcessGroup, world: int) -> None:
    """Average gradients over a data-parallel group (one flat buffer, fixed order)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float,
                    pp_group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Clip to ``max_norm`` (0 = only measure) and return the GLOBAL grad norm.

    FSDP grads are DTensors: ``torch.nn.utils.clip_grad_norm_`` reduces over the
    shards. With pipelines each rank holds one stage: square-sum over stages."""
    params = [p for p in params if p.grad is not None]
    limit = max_norm if max_norm > 0 else float("inf")
    if pp_group is None:
        norm = torch.nn.utils.clip_grad_norm_(params, limit, foreach=False)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return norm
    local = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=False)
    sq = local.pow(2)
    dist.all_reduce(sq, group=pp_group)
    norm = sq.sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, limit, norm, foreach=False)
    return norm


def local_and_full_bytes(tensors) -> tuple[int, int]:
    """(bytes held by this rank, bytes of the full tensors) — DTensor-aware."""
    local = full = 0
    for t in tensors:
        size = t.element_size()
        if hasattr(t, "to_local"):
            local += t.to_local().numel() * size
        else:
            local += t.numel() * size
        full += t.numel() * size
    return local, full


def memory_report(parts: list[nn.Module], optimizers: list[torch.optim.Optimizer]) -> dict[str, int]:
    """Bytes of parameters and Adam moments held by this rank, and in the whole model."""
    params = [p for m in parts for p in m.parameters()]
    p_local, p_full = local_and_full_bytes(params)
    moments = []
    for opt in optimizers:
        inner = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer keeps its local optimizer here
        for st in inner.state.values():
            moments += [v for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    o_local, _ = local_and_full_bytes(moments)
    return {"param_bytes_local": p_local, "param_bytes_full": p_full,
            "optim_bytes_local": o_local, "optim_bytes_full": 2 * p_full}


def gpu_metrics(device: torch.device) -> dict[str, float]:
    """Heartbeat metrics of this rank's GPU: peak memory allocated (bytes) and, where NVML answers
    (``torch.cuda.utilization`` needs the nvidia-ml-py package), utilisation over the driver's last
    sample period (percent)."""
    out = {"memory_bytes": float(torch.cuda.max_memory_allocated(device))}
    try:
        out["gpu_utilization"] = float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - no NVML here: leave utilisation out rather than guess
        pass
    return out


_WRAPPERS = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def layer_group(name: str) -> str:
    """The layer group of a parameter's FQN: ``layers.3`` for a block's, else its top module (``tok_emb``)."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" and len(parts) > 2 else parts[0]


def grad_norms_by_group(parts: list[nn.Module]) -> dict[str, float]:
    """The gradient norm of each layer group (health.grad_norm_groups), over the whole model:
    DTensor (FSDP) gradients are reduced over their shards; DDP gradients are already whole.
    Every rank must call it (FSDP reduces). Not for pipelines (a stage holds some groups only)."""
    groups: dict[str, list[torch.Tensor]] = {}
    for m in parts:
        for name, p in m.named_parameters():
            if p.grad is not None:
                groups.setdefault(layer_group(name), []).append(p.grad)
    out = {}
    for g, grads in sorted(groups.items()):
        norm = torch.nn.utils.get_total_norm(grads, foreach=False)
        out[g] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return out
