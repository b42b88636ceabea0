"""In-process checks: the chip's matmul peak, the trainer's throughput/MFU, and
FSDP2 with CPU offload against no offload. Each returns a JSON-ready dict and raises
on failure (the caller records the error and goes on)."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .build import Profile, make_trainer, release_memory, single_rank_env, train_config
from .measure import (
    FLOPS_FORMULA, MFU_FORMULA, PEAK_FORMULA, loss_agreement, matmul_flops, model_flops, ratio, summarize,
)
from .observe import RecordingSession

# FSDP2 + CPU offload vs no offload, same seed and data: per-step |loss difference| <= RTOL * |loss|.
# The optimizer step runs on the CPU with offload (AdamW's CPU kernels, another summation order
# than CUDA's foreach kernels), so parameters differ in their last fp32 bits after step 1 and
# bf16 compute can round a few of them differently: expect ~1e-5 relative, allow 1e-3.
OFFLOAD_RTOL = 1e-3

# (name, activation checkpointing, deterministic algorithms, torch.compile per block)
EAGER_VARIANTS = (
    ("bf16", False, True, False),                 # the trainer's defaults with parallel.bf16: true
    ("bf16_ac", True, True, False),               # + parallel.activation_checkpointing: true
    ("bf16_nondeterministic", False, False, False),  # train.deterministic: false
)
# torch.compile of each block: the trainer has no such option yet; measured last (it may
# take minutes to compile), to say whether adding one is worth it.
COMPILED_VARIANTS = (("bf16_nondeterministic_compiled", False, False, True),)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- peak
def peak(profile: Profile, device: torch.device) -> dict[str, Any]:
    """Dense bf16 matmul throughput of this chip, measured now."""
    samples = []
    for n in profile.peak_sizes:
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        c = torch.empty(n, n, device=device, dtype=torch.bfloat16)

        def burst() -> None:
            for _ in range(profile.peak_iters):
                torch.mm(a, b, out=c)

        burst()  # warm up (cuBLAS heuristics, clocks)
        for _ in range(profile.peak_trials):
            per = timed(burst, device) / profile.peak_iters
            samples.append({"n": n, "seconds_per_matmul": per, "tflops": matmul_flops(n) / per / 1e12})
        del a, b, c
    release_memory()
    best = max(samples, key=lambda s: s["tflops"])
    return {"dtype": "bfloat16", "formula": PEAK_FORMULA, "peak_tflops": best["tflops"], "at_n": best["n"],
            "iters_per_trial": profile.peak_iters, "samples": samples}


# ----------------------------------------------------------------------- throughput
class StepTimers:
    """Times the parts of ``Trainer.train_step`` that are not the model: synthetic data
    generation (``batcher.next_batch``) and the optimizer step (device-synchronised)."""

    def __init__(self, trainer, device: torch.device):
        self.data: list[float] = []
        self.optimizer: list[float] = []
        next_batch = trainer.batcher.next_batch

        def timed_next_batch():
            t0 = time.perf_counter()
            out = next_batch()
            self.data.append(time.perf_counter() - t0)
            return out

        trainer.batcher.next_batch = timed_next_batch
        for opt in trainer.optimizers:
            step = opt.step

            def timed_step(*args, _step=step, **kwargs):
                out = []
                self.optimizer.append(timed(lambda: out.append(_step(*args, **kwargs)), device))
                return out[0]

            opt.step = timed_step

    def reset(self) -> None:
        self.data.clear()
        self.optimizer.clear()


def set_determinism(on: bool, device: torch.device) -> None:
    from stoker.worker.trainer import deterministic_algorithms_kwargs

    if on:
        torch.use_deterministic_algorithms(**deterministic_algorithms_kwargs(device.type))
    else:
        torch.use_deterministic_algorithms(False)


def run_variant(trainer, timers: StepTimers, profile: Profile, device: torch.device, *, ac: bool,
                deterministic: bool, compiled: bool, flops: dict, peak_tflops: float | None) -> dict[str, Any]:
    from stoker.worker import parallel

    model = trainer.parts[0]
    if ac:
        parallel.apply_ac(model)
    else:
        for layer in model.layers.values():
            layer.activation_checkpointing = False
    set_determinism(deterministic, device)
    if compiled:
        for layer in model.layers.values():
            layer.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup_s = timed(lambda: [trainer.train_step() for _ in range(profile.tp_warmup)], device)
    timers.reset()
    seconds, losses = [], []
    for _ in range(profile.tp_steps):
        seconds.append(timed(lambda: losses.append(trainer.train_step()[0]), device))
    tokens_per_step = profile.tp_global * profile.seq_len
    step_s = summarize(seconds)
    tps = tokens_per_step / step_s["median"]
    peak_flops = peak_tflops * 1e12 if peak_tflops else None
    hw_flops = flops["hardware_flops_per_token_with_ac"] if ac else flops["model_flops_per_token"]
    return {
        "activation_checkpointing": ac, "deterministic": deterministic, "compiled": compiled,
        "warmup_steps": profile.tp_warmup, "warmup_s": warmup_s, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tps, "tokens_per_s_mean": tokens_per_step * len(seconds) / sum(seconds),
        "mfu": ratio(flops["model_flops_per_token"] * tps, peak_flops), "hfu": ratio(hw_flops * tps, peak_flops),
        "step_s": step_s, "step_s_samples": seconds, "losses": losses,
        "data_s": summarize(timers.data), "optimizer_s": summarize(timers.optimizer),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def throughput(profile: Profile, device: torch.device, peak_tflops: float | None, *, variants: tuple,
               deadline: float) -> dict[str, Any]:
    """One bf16 trainer (mode single), the variants one after the other on it."""
    steps = len(variants) * (profile.tp_warmup + profile.tp_steps)
    raw = train_config(profile, micro=profile.tp_micro, global_batch=profile.tp_global, steps=steps, bf16=True)
    trainer = make_trainer(raw, RecordingSession())
    args = trainer.args
    flops = model_flops(d_model=args.d_model, n_layers=args.n_layers, vocab_size=args.vocab_size,
                        seq_len=profile.seq_len, mlp_ratio=args.mlp_ratio)
    out: dict[str, Any] = {
        "config": raw, "parameters": trainer.parts[0].num_params(), "flops": flops, "flops_formula": FLOPS_FORMULA,
        "mfu_formula": MFU_FORMULA, "peak_tflops": peak_tflops, "variants": {},
    }
    timers = StepTimers(trainer, device)
    try:
        for name, ac, det, compiled in variants:
            if time.monotonic() > deadline:
                out["variants"][name] = {"status": "skipped", "reason": "time budget spent"}
                continue
            try:
                out["variants"][name] = {"status": "ok", **run_variant(
                    trainer, timers, profile, device, ac=ac, deterministic=det, compiled=compiled, flops=flops,
                    peak_tflops=peak_tflops)}
            except Exception as exc:  # noqa: BLE001 - one variant failing is a result, not the end
                out["variants"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        trainer.close()
        del trainer
        if any(v[3] for v in variants):
            torch._dynamo.reset()
        release_memory()
    ok = [v for v in out["variants"].values() if v["status"] == "ok"]
    out["best_tokens_per_s"] = max((v["tokens_per_s"] for v in ok), default=None)
    out["best_mfu"] = max((v["mfu"] for v in ok if v["mfu"] is not None), default=None)
    return out


# ---------------------------------------------------------------------- FSDP offload
def run_leg(raw: dict[str, Any], steps: int, device: torch.device) -> dict[str, Any]:
    """A fresh trainer from ``raw``; ``steps`` optimizer steps; losses and step times."""
    with single_rank_env():
        trainer = make_trainer(raw, RecordingSession())
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            losses, seconds = [], []
            for _ in range(steps):
                seconds.append(timed(lambda: losses.append(trainer.train_step()[0]), device))
            memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            report = trainer.memory_report()
        finally:
            trainer.close()
            del trainer
            release_memory()
    return {"config": raw, "losses": losses, "step_s_samples": seconds, "step_s": summarize(seconds),
            "peak_gpu_memory_gib": memory, "memory": report}


def fsdp_offload(profile: Profile, device: torch.device) -> dict[str, Any]:
    """FSDP2 (zero3) with CPU offload vs without, same seed/data/steps: the losses agree."""
    cuda = device.type == "cuda"
    reference = ("fsdp_zero3", {"mode": "zero3"})
    if cuda:
        candidate = ("fsdp_zero3_cpu_offload", {"mode": "zero3", "cpu_offload": True})
        reason = None
    else:
        candidate = ("single", {"mode": "single"})
        reason = ("parallel.cpu_offload needs CUDA (config.validate_for_device): on the CPU the FSDP2 leg "
                  "is compared with the plain single-process trainer instead")
    legs = {}
    for name, kw in (reference, candidate):
        raw = train_config(profile, micro=profile.fsdp_micro, global_batch=profile.fsdp_micro,
                           steps=profile.fsdp_steps, bf16=cuda, lr=1e-3 if cuda else 3e-3, **kw)
        legs[name] = run_leg(raw, profile.fsdp_steps, device)
    agreement = loss_agreement(legs[reference[0]]["losses"], legs[candidate[0]]["losses"], rtol=OFFLOAD_RTOL)
    return {"reference": reference[0], "candidate": candidate[0], "offload_applies": cuda,
            "offload_not_applied_reason": reason, "tolerance": f"per step |loss_candidate - loss_reference| <= "
            f"{OFFLOAD_RTOL:g} * |loss_reference|", "agree": agreement["agree"], "agreement": agreement,
            "legs": legs}
