"""The built-in trainer: GPT on synthetic data with single / DDP / ZeRO-1/2/3 /
pipeline (GPipe, 1F1B) x data parallelism, exact resume through sharded checkpoints.

What a checkpoint holds is the short list of named ``Stateful`` parts in ``state.py``;
model and optimizer go through ``torch.distributed.checkpoint.state_dict`` (FQN-keyed,
DTensor-sharded for FSDP, per-stage for pipelines) so DCP can reshard them to another
world size or layout on load.

Determinism: same seed + same world size => bit-identical parameters. Init is per
parameter from (seed, name); data is a pure function of (seed, index); the CPU thread
count is fixed (``train.num_threads``, torchrun's OMP_NUM_THREADS=1) and
``torch.use_deterministic_algorithms`` is on (GPU: strict, plus CUBLAS_WORKSPACE_CONFIG
and no cuDNN autotuning; see ``deterministic_algorithms_kwargs``). Reductions (gloo/NCCL all-reduce, FSDP reduce-scatter) have a
fixed order for a fixed world size; across world sizes results agree to ~1e-7.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful

from stoker.worker import evaluation, parallel
from stoker.worker.evaluation import loss_fn
from stoker.worker.checksum import model_checksum
from stoker.worker.config import (
    FSDP_MODES, PIPELINE_MODES, Config, ConfigError, validate_for_device, validate_for_world,
)
from stoker.worker.checkpoint_hooks import hold_commit, open_memory, restore, share_memory
from stoker.worker.precision import LOSS_SCALER, loss_scaling
from stoker.worker.stopping import Stopper
from stoker.worker.data import DistributedBatcher, validation_batches
from stoker.worker.drills import StuckCollective
from stoker.worker.health_guard import HealthGuard
from stoker.worker.metrics_file import MetricsFile
from stoker.worker.session_api import check_session
from stoker.worker.shards import dataset_for
from stoker.worker.model import model_args
from stoker.worker.state import (
    DATALOADER, LR_SCHEDULER, MODEL, OPTIMIZER, TRAIN_STATE, LRSchedule, ModelState, OptimizerState, TrainState,
    deterministic_algorithms_kwargs, lr_factor, seed_everything,
)

log = logging.getLogger("stoker.worker.trainer")


class Trainer(Stateful):
    """Builds everything from a Config for the current world and runs the loop.

    The Trainer itself is Stateful: its state is the train state (step, tokens)."""

    def __init__(self, cfg: Config, *, session=None):
        marks = [("start", time.monotonic())]   # where a (re)start's seconds go: logged as trainer.built
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.pp, self.dp = validate_for_world(cfg, self.world)
        if cfg.parallel.mode != "single" and "RANK" not in os.environ:
            raise ConfigError(f"parallel.mode: {cfg.parallel.mode} needs torchrun "
                              f"(torchrun --nproc-per-node N -m stoker.worker.train ...), or use mode single")
        self.device = parallel.device_for_rank(local_rank)
        validate_for_device(cfg, self.device.type)
        self._setup_determinism()
        if session is None:  # operator SDK (gRPC, protobuf): a no-op without STOKER_OPERATOR_ADDR
            from stoker.worker.sdk import Session

            session = Session.from_env()
        # heartbeats from here: a trainer waiting for its peers to form the process group is seen alive
        # (the operator's relaunch-lag rule needs it: a peer frozen in its start keeps this one waiting)
        self.session = check_session(session).start()
        marks.append(("setup", time.monotonic()))   # validation, determinism (torch._inductor), the SDK session
        if self.world > 1 or "RANK" in os.environ:
            if not dist.is_initialized():
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                dist.init_process_group(parallel.backend_for(self.device))
        self.distributed = dist.is_initialized()
        marks.append(("process_group", time.monotonic()))
        seed_everything(cfg.train.seed + self.rank)
        self.dims = parallel.ParallelDims(pp=self.pp, dp=self.dp, world_size=self.world)
        self.mesh = self.dims.build_mesh(self.device.type) if self.distributed else None
        self.dp_rank = self.mesh["dp"].get_local_rank() if self.mesh is not None else 0
        # the journal's name for the processes training together now: a restart in place keeps the incarnation
        self.session.journal_world(self.gather(f"{os.environ.get('STOKER_POD_NAME') or os.uname().nodename}"
                                               f"/{os.getpid()}")[0])
        self.drill = StuckCollective(cfg.debug.stuck_collective_on_signal)
        self.train_state = TrainState(cfg.train.seed, self.rank, self.world)
        self.resumed_from: int | None = None  # set by restore()
        self.resumed_world_size: int | None = None  # the world size that wrote that checkpoint
        self.memory = open_memory(cfg.checkpoint.memory_every, self.rank, self.world)  # None: off
        self._build()
        self.metrics = MetricsFile(cfg.output.metrics_path, self.is_metrics_rank)
        marks.append(("build", time.monotonic()))   # the mesh, the memory tier's group, the model
        log.info("trainer.built %s", " ".join(f"{b[0]}_s={b[1] - a[1]:.3f}" for a, b in zip(marks, marks[1:])))

    # -- setup
    def _setup_determinism(self) -> None:
        t = self.cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        if t.deterministic:
            # CPU: fixed thread count + deterministic kernels; GPU: cuBLAS workspace
            # config (read when cuBLAS first runs: before any CUDA matmul in this process),
            # no cuDNN autotuning, deterministic SDPA/scatter kernels (strict mode).
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(**deterministic_algorithms_kwargs(self.device.type))

    def _build(self) -> None:
        cfg = self.cfg
        t, p, d = cfg.train, cfg.parallel, cfg.data
        self.args = model_args(cfg.model.size, vocab_size=d.vocab_size, max_seq_len=d.seq_len,
                               tie_embeddings=cfg.model.tie_embeddings)
        self.data = dataset_for(cfg)  # SyntheticLM, or the sharded dataset at data.uri
        self.batcher = DistributedBatcher(self.data, global_batch=t.global_batch, micro_batch=t.micro_batch,
                                          dp_degree=self.dp, dp_rank=self.dp_rank, order_seed=t.seed)
        self.guard = HealthGuard(cfg, self.batcher)
        self.stopper = Stopper(t.max_tokens, cfg.validation.patience, cfg.validation.min_delta)
        self.val = (validation_batches(self.data, n_samples=cfg.validation.samples, batch=t.micro_batch,
                                       dp_degree=self.dp, dp_rank=self.dp_rank)
                    if cfg.validation.every else [])
        mode = p.mode
        self.schedule = None
        self.pp_group = None
        adamw = {"lr": t.lr, "betas": (t.beta1, t.beta2)}
        if mode in PIPELINE_MODES:
            self.schedule, self.parts = parallel.pipeline_model(
                self.args, t.seed, self.mesh, self.device, schedule=mode, n_microbatches=self.batcher.accum,
                loss_fn=loss_fn, activation_checkpointing=p.activation_checkpointing)
            self.pp_group = self.mesh["pp"].get_group()
            self.optimizers = [torch.optim.AdamW(parallel.param_groups(m, t.weight_decay), **adamw)
                               for m in self.parts]
        else:
            model = parallel.build_model(self.args, t.seed, self.device)
            if p.activation_checkpointing:
                parallel.apply_ac(model)
            if mode in FSDP_MODES:
                model = parallel.apply_fsdp(model, self.mesh, reshard_after_forward=(mode == "zero3"),
                                            cpu_offload=p.cpu_offload, mixed_precision=p.bf16)
            elif mode in ("ddp", "zero1"):
                model = parallel.apply_ddp(model, self.mesh, self.device)
            if mode == "zero1":
                opt = parallel.apply_zero1(model, self.mesh, lr=t.lr, betas=adamw["betas"],
                                           weight_decay=t.weight_decay)
            else:
                opt = torch.optim.AdamW(parallel.param_groups(model, t.weight_decay), **adamw)
            self.parts, self.optimizers = [model], [opt]
        self.scaling = loss_scaling(cfg, self.device.type)
        self.group_norms: dict[str, float] = {}  # health.grad_norm_groups: per layer group, last step
        self.lr_schedule = LRSchedule(self.optimizers, t.lr, warmup=t.warmup_steps, total=t.steps,
                                      min_ratio=t.min_lr_ratio)
        self.checkpoint_state = {
            MODEL: ModelState(self.parts),
            OPTIMIZER: OptimizerState(self.parts, self.optimizers),
            LR_SCHEDULER: self.lr_schedule,
            DATALOADER: self.batcher,
            TRAIN_STATE: self,  # the trainer is Stateful: its state is the train state
        }
        if self.scaling.enabled:
            self.checkpoint_state[LOSS_SCALER] = self.scaling
        # Who writes metrics: the first rank (dp rank 0) of the last pipeline stage.
        last_stage = self.schedule is None or self.schedule.is_last
        self.is_metrics_rank = last_stage and self.dp_rank == 0

    # -- Stateful (the trainer's own state is the train state)
    def state_dict(self) -> dict[str, Any]:
        return self.train_state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_state.load_state_dict(state)

    # -- helpers
    def _autocast(self):
        if self.cfg.parallel.bf16 and self.cfg.parallel.mode not in FSDP_MODES:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.cfg.parallel.fp16:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _all_params(self) -> list[nn.Parameter]:
        return [p for m in self.parts for p in m.parameters()]

    def _sum_world(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            self.session.set_activity("collective")  # what the operator's stuck-collective rule reads
            self.drill.block_if_armed(self.train_state.step)
            dist.all_reduce(t)
            self.session.set_activity("compute")
        return t.tolist()

    # -- one optimizer step
    def _pipeline_pass(self, run, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """One pass of the pipeline schedule (``schedule.step`` to train, ``schedule.eval`` to
        validate): the first stage feeds the inputs, the last gets the targets and the losses."""
        losses: list[torch.Tensor] = []
        first, last = self.schedule.is_first, self.schedule.is_last  # type: ignore[union-attr]
        with self._autocast():
            if first and last:
                run(x, target=y, losses=losses)
            elif first:
                run(x)
            elif last:
                run(target=y, losses=losses)
            else:
                run()
        return losses

    def train_step(self) -> tuple[float, float]:
        """Returns (this rank's share of the loss, global grad norm)."""
        t0 = time.perf_counter()
        self.session.set_activity("data")
        if self.resumed_from is None:  # debug.data_pauses (drills): in a fresh run only, like slow checkpoints
            self.guard.data_pause(self.train_state.step + 1)
        micro = self.batcher.next_batch()
        self.data_wait_s = time.perf_counter() - t0  # the step's wait for its batch (S3 shards, synthesis)
        self.session.set_activity("compute")
        poison = self.guard.poison_factor()  # tests' poisoned data (debug.poison_samples)
        for m in self.parts:
            m.train()
        if self.schedule is not None:
            x = torch.cat([mb[0] for mb in micro]).to(self.device)
            y = torch.cat([mb[1] for mb in micro]).to(self.device)
            losses = self._pipeline_pass(self.schedule.step, x, y)
            local_loss = torch.stack(losses).mean().item() if losses else 0.0
            self.session.set_activity("collective")
            parallel.allreduce_grads(self._all_params(), self.mesh["dp"].get_group(), self.dp)
            self.session.set_activity("compute")
            norm = parallel.clip_grad_norm_(self._all_params(), self.cfg.train.grad_clip, pp_group=self.pp_group)
        else:
            model = self.parts[0]
            total = torch.zeros((), device=self.device)
            n = len(micro)
            for i, (x, y) in enumerate(micro):
                x, y = x.to(self.device), y.to(self.device)
                last = i == n - 1
                sync = model.no_sync() if (hasattr(model, "no_sync") and not last) else contextlib.nullcontext()
                with sync, self._autocast():
                    loss = loss_fn(model(x), y) / n
                    if poison is not None:
                        loss = loss * poison
                self.scaling.scale(loss).backward()
                total += loss.detach()
            local_loss = total.item()
            self.scaling.unscale(self.optimizers)
            if self.cfg.health.grad_norm_groups:  # before clipping, like the global norm
                self.group_norms = parallel.grad_norms_by_group(self.parts)
            norm = parallel.clip_grad_norm_(self._all_params(), self.cfg.train.grad_clip)
        self.scaling.step(self.optimizers)  # fp16: skipped when the gradients overflowed
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        return local_loss, float(norm)

    def validate(self) -> float:
        """Mean validation loss over the held-out set (all ranks get it)."""
        return evaluation.validation_loss(self)

    def memory_report(self) -> dict[str, int]:
        return parallel.memory_report(self.parts, self.optimizers)

    # -- the loop
    def restore(self):
        """Where this run starts: ``checkpoint_hooks.restore``. Returns (manager or None, step)."""
        return restore(self)

    def adopt_manifest(self, manifest: dict | None) -> None:
        """After any load (a resume, a health rollback): what the checkpoint's manifest carried."""
        self.guard.adopt(manifest)
        self.stopper.adopt(manifest)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t, c = cfg.train, cfg.checkpoint
        ckpt, resumed_from = self.restore()
        self.metrics.trim(resumed_from or 0)
        self.session.set_phase("TRAINING")
        tokens_per_step = t.global_batch * cfg.data.seq_len
        last_saved = resumed_from
        stop, ended = False, None  # ended: why training stops before train.steps (stopping.py)
        while self.train_state.step < t.steps and not stop and not ended:
            t0 = time.perf_counter()
            local_loss, norm = self.train_step()
            self.train_state.step += 1
            self.train_state.tokens_seen += tokens_per_step
            step = self.train_state.step
            ask_ckpt = 1.0 if self.session.checkpoint_requested() else 0.0
            ask_stop = 1.0 if self.session.stop_requested() else 0.0
            loss_sum, ckpt_votes, stop_votes, norm_vote = self._sum_world([local_loss, ask_ckpt, ask_stop, norm])
            loss = loss_sum / self.dp
            dt = time.perf_counter() - t0
            tps = tokens_per_step / dt if dt > 0 else None
            norm_seen = None if self.scaling.overflowed else norm_vote  # fp16 overflow: skipped, no anomaly
            if self.guard.check(self, ckpt, step, loss, norm_seen, tps):
                last_saved = self.train_state.step  # rolled back to a committed checkpoint
                if self.memory is not None:
                    self.memory.forget_after(last_saved)
                continue
            record = {"step": step, "loss": loss, "grad_norm": norm, "lr": self.lr_schedule.base_lr *
                      lr_factor(step, **self.lr_schedule.kw), "tokens_seen": self.train_state.tokens_seen,
                      "tokens_per_s": tps, "world_size": self.world}
            if cfg.validation.every and (step % cfg.validation.every == 0 or step == t.steps):
                val = self.validate()
                record["val_loss"] = val
                record["val_ppl"] = math.exp(min(val, 50.0))
            record["data_wait_s"] = self.data_wait_s
            more = {**self.scaling.metrics(), **{f"grad_norm.{g}": v for g, v in self.group_norms.items()}}
            record.update(more)
            self.metrics.emit(record)
            extra = {"val_loss": record["val_loss"], "val_ppl": record["val_ppl"]} if "val_loss" in record else {}
            if self.device.type == "cuda":
                extra.update(parallel.gpu_metrics(self.device))
            self.session.step(step, loss=loss, grad_norm=norm, tokens_per_second=tps or 0.0,
                              step_time_seconds=dt, tokens_seen=float(self.train_state.tokens_seen),
                              learning_rate=record["lr"], data_wait_seconds=self.data_wait_s, **more, **extra)
            stop = stop_votes > 0
            ended = self.stopper.after_step(step, self.train_state.tokens_seen, record.get("val_loss"))
            requested = ckpt_votes > 0 or stop  # any rank's operator command: all ranks act at this step
            due = c.interval and step % c.interval == 0
            if ckpt is not None and (due or requested or step == t.steps):
                self.save(ckpt, step)
                last_saved = step
                if requested:
                    ckpt.wait()  # commit now: on_result acknowledges the operator's request
            elif requested:
                log.error("trainer.checkpoint_requested_without_uri step=%d (set checkpoint.uri)", step)
            if self.memory is not None and step % c.memory_every == 0:
                self.save_to_memory(step)
            if cfg.debug.stall_after_step == step and ckpt is not None:
                ckpt.wait()
                log.warning("trainer.stalled step=%d (debug.stall_after_step)", step)
                self.metrics.emit({"event": "stalled", "step": step})
                while True:
                    time.sleep(3600)
        if ckpt is not None:
            if last_saved != self.train_state.step:
                self.save(ckpt, self.train_state.step)
            ckpt.close()
        checksum = model_checksum(self.parts)
        summary = {"step": self.train_state.step, "tokens_seen": self.train_state.tokens_seen,
                   "checksum": checksum, "world_size": self.world, "mode": cfg.parallel.mode,
                   "resumed_from": resumed_from, "resumed_world_size": self.resumed_world_size,
                   "stopped_early": stop, "ended": ended}
        summary["memory_by_rank"] = self.gather(self.memory_report())
        if self.rank == 0 and cfg.output.summary_path:
            Path(cfg.output.summary_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.output.summary_path).write_text(json.dumps(summary, indent=2, sort_keys=True))
        if not stop:  # a STOP_AFTER_CHECKPOINT drain is not the end of the job
            if self.memory is not None:
                self.memory.drop()
            self.session.set_phase("FINISHED", reason=ended or "")
        return summary

    def before_commit(self, step: int) -> None:
        """The checkpoint manager's hook between stored shards and the commit."""
        hold_commit(self.cfg.debug, step, self.resumed_from)

    def save(self, ckpt, step: int) -> None:
        self.train_state.capture()
        self.session.set_phase("CHECKPOINTING")
        self.session.set_activity("checkpoint")
        # async: returns once staged; on_result reports the commit
        ckpt.save(step, self.checkpoint_state, manifest_extra={**self.guard.manifest(), **self.stopper.manifest()})
        self.session.set_phase("TRAINING")
        self.session.set_activity("compute")

    def save_to_memory(self, step: int) -> None:
        """``checkpoint.memory_every``: this rank's state into the pod's memory and the next rank's (synchronous)."""
        self.train_state.capture()
        state = {k: (v.state_dict() if isinstance(v, Stateful) else v) for k, v in self.checkpoint_state.items()}
        written = self.memory.save(step, state, {"world_size": self.world, **self.guard.manifest(),
                                                 **self.stopper.manifest()})
        share_memory(self.memory, step, written, self.rank, self.world)   # a copy on the next rank's pod

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (a collective)."""
        if not self.distributed:
            return [value]
        everyone: list = [None] * self.world
        dist.all_gather_object(everyone, value)
        return everyone

    def close(self) -> None:
        self.metrics.close()
        self.session.close()
        if self.distributed:
            dist.destroy_process_group()
