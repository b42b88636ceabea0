"""Pure arithmetic of the GPU check: model FLOPs, MFU, sample statistics, loss
agreement, checksum differences. No torch, so it is unit-tested anywhere."""
from __future__ import annotations

import math
import statistics
from typing import Sequence

FLOPS_FORMULA = (
    "model FLOPs per token = 6*N + 12*L*d*T, N = parameters that take part in matmuls "
    "(per block qkv 3d^2 + attention proj d^2 + MLP 2*r*d^2, plus the output head V*d; the "
    "token/position embeddings are lookups and LayerNorm is not counted), 12*L*d*T = attention "
    "scores and weighted values (QK^T and AV, 2*2*T*d per token and layer forward, x3 for "
    "forward+backward, no causal halving: the PaLM appendix-B convention). Activation "
    "checkpointing's recomputation is not model FLOPs (hardware FLOPs add 2*N_blocks + 4*L*d*T)."
)
MFU_FORMULA = "MFU = model FLOPs per token x tokens/s / measured dense bf16 matmul peak (FLOP/s) of this chip"
PEAK_FORMULA = "peak = max over sizes and trials of 2*n^3 / seconds per (n x n) @ (n x n) bf16 matmul"


def model_flops(*, d_model: int, n_layers: int, vocab_size: int, seq_len: int, mlp_ratio: int = 4) -> dict[str, int]:
    """FLOPs per trained token of the built-in GPT (see FLOPS_FORMULA)."""
    block_params = n_layers * (4 + 2 * mlp_ratio) * d_model * d_model
    n_matmul = block_params + vocab_size * d_model
    attention = 12 * n_layers * d_model * seq_len
    model = 6 * n_matmul + attention
    recompute = 2 * block_params + 4 * n_layers * d_model * seq_len  # one more forward of every block
    return {"matmul_params": n_matmul, "block_matmul_params": block_params,
            "attention_flops_per_token": attention, "model_flops_per_token": model,
            "hardware_flops_per_token_with_ac": model + recompute}


def matmul_flops(n: int) -> int:
    return 2 * n ** 3


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize(samples: Sequence[float]) -> dict[str, float | int | None]:
    """n, median, mean, min, max and (n > 1) sample standard deviation."""
    xs = [float(x) for x in samples]
    if not xs:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None, "stdev": None}
    return {"n": len(xs), "median": statistics.median(xs), "mean": statistics.fmean(xs), "min": min(xs),
            "max": max(xs), "stdev": statistics.stdev(xs) if len(xs) > 1 else None}


def loss_agreement(reference: Sequence[float], candidate: Sequence[float], *, rtol: float) -> dict:
    """Per-step |candidate - reference| against ``rtol * |reference|``.

    ``signal`` is how far the reference loss moved over the run: a tolerance is only
    meaningful if it is much smaller than that (a leg that skipped its updates would
    stay at the first loss)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"loss lists differ in length or are empty: {len(reference)} vs {len(candidate)}")
    diffs = [abs(c - r) for r, c in zip(reference, candidate)]
    allowed = [rtol * abs(r) for r in reference]
    finite = all(math.isfinite(x) for x in (*reference, *candidate))
    signal = abs(reference[0] - reference[-1])
    return {"rtol": rtol, "abs_diff": diffs, "max_abs_diff": max(diffs),
            "max_rel_diff": max(d / abs(r) if r else math.inf for d, r in zip(diffs, reference)),
            "agree": finite and all(d <= a for d, a in zip(diffs, allowed)),
            "reference_loss_change": signal, "tolerance_at_last_step": allowed[-1],
            "tolerance_below_signal": signal > 10 * max(allowed)}


def differing_names(a: dict[str, Sequence], b: dict[str, Sequence], limit: int = 10) -> dict:
    """Which parameters differ between two {name: (dtype, shape, digest)} maps."""
    names = sorted(set(a) | set(b))
    differ = [n for n in names if tuple(a.get(n, ())) != tuple(b.get(n, ()))]
    return {"count": len(differ), "of": len(names), "first": differ[:limit]}
