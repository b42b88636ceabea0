"""A small GPT-style decoder language model.

Token + learned position embedding, pre-LN blocks (causal self-attention through
``F.scaled_dot_product_attention`` and a GELU MLP), final LayerNorm, tied or untied
output head. Sizes are looked up by name (``tiny`` for tests ... ``1b`` for GPUs).

The layers live in an ``nn.ModuleDict`` keyed "0".."L-1" and every optional part
(embeddings, final norm, head) may be ``None``: a pipeline stage is the same class
with the parts it does not own removed, so parameter names (FQNs) are the same in
every parallel layout and checkpoints reshard between them.

Initialisation is per parameter from ``(seed, name)``: the values do not depend on
which other parameters exist on this rank, on the device, or on construction order.
"""
from __future__ import annotations

import dataclasses
import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int = 256
    max_seq_len: int = 128
    mlp_ratio: int = 4
    tie_embeddings: bool = False


# Named sizes. Parameter counts are for vocab 50304 (1b) / the data vocab (others).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 16, "n_layers": 4, "n_heads": 2},      # ~15K params at vocab 64
    "mini": {"d_model": 64, "n_layers": 4, "n_heads": 4},      # ~0.2M
    "small": {"d_model": 256, "n_layers": 6, "n_heads": 8},    # ~5M
    "medium": {"d_model": 768, "n_layers": 12, "n_heads": 12},  # ~85M + embeddings (GPT-2 small)
    "1b": {"d_model": 2048, "n_layers": 18, "n_heads": 16},    # ~0.9B + embeddings
}


def model_args(size: str, *, vocab_size: int, max_seq_len: int, tie_embeddings: bool = False) -> ModelArgs:
    if size not in SIZES:
        raise ValueError(f"model.size: unknown size {size!r} (choose one of {', '.join(SIZES)})")
    return ModelArgs(vocab_size=vocab_size, max_seq_len=max_seq_len, tie_embeddings=tie_embeddings, **SIZES[size])


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.qkv = nn.Linear(args.d_model, 3 * args.d_model, bias=False)
        self.proj = nn.Linear(args.d_model, args.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.fc = nn.Linear(args.d_model, args.mlp_ratio * args.d_model, bias=False)
        self.proj = nn.Linear(args.mlp_ratio * args.d_model, args.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ln1 = nn.LayerNorm(args.d_model)
        self.attn = Attention(args)
        self.ln2 = nn.LayerNorm(args.d_model)
        self.mlp = MLP(args)
        self.activation_checkpointing = False  # set by parallel.apply_ac

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class GPT(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_emb: nn.Embedding | None = nn.Embedding(args.vocab_size, args.d_model)
        self.pos_emb: nn.Embedding | None = nn.Embedding(args.max_seq_len, args.d_model)
        self.layers = nn.ModuleDict({str(i): Block(args) for i in range(args.n_layers)})
        self.norm: nn.LayerNorm | None = nn.LayerNorm(args.d_model)
        self.head: nn.Linear | None = nn.Linear(args.d_model, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, V); a pipeline stage without the
        embeddings takes hidden states (B, T, D), one without the head returns them."""
        if self.tok_emb is not None:
            pos = torch.arange(x.shape[1], device=x.device)
            x = self.tok_emb(x) + self.pos_emb(pos)
        for layer in self.layers.values():
            x = layer(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.head is not None:
            x = self.head(x)
        return x

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Deterministic init: every parameter from its own generator seeded by (seed, name)."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            gen = torch.Generator().manual_seed(param_seed(seed, name))
            if name.endswith(("ln1.weight", "ln2.weight", "norm.weight")):
                value = torch.ones(p.shape)
            elif name.endswith(".bias"):
                value = torch.zeros(p.shape)
            else:
                s = resid_std if name.endswith("proj.weight") else std
                value = torch.randn(p.shape, generator=gen) * s
            p.copy_(value.to(device=p.device, dtype=p.dtype))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def param_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def stage_layer_ranges(n_layers: int, n_stages: int) -> list[range]:
    """Split layers as evenly as possible; earlier stages get the extra layer
    (the last stage also carries the head)."""
    if n_stages > n_layers:
        raise ValueError(f"parallel.pp: {n_stages} pipeline stages need at least as many layers, "
                         f"the model has {n_layers}")
    base, extra = divmod(n_layers, n_stages)
    out, start = [], 0
    for s in range(n_stages):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def prune_to_stage(model: GPT, stage: int, n_stages: int) -> GPT:
    """Keep only what pipeline stage ``stage`` owns (in place); names stay the same."""
    if model.args.tie_embeddings and n_stages > 1:
        raise ValueError("model.tie_embeddings: tied embeddings cannot be split across pipeline stages; "
                         "set model.tie_embeddings: false for pipeline modes")
    keep = stage_layer_ranges(model.args.n_layers, n_stages)[stage]
    for i in list(model.layers.keys()):
        if int(i) not in keep:
            del model.layers[i]
    if stage != 0:
        model.tok_emb = None
        model.pos_emb = None
    if stage != n_stages - 1:
        model.norm = None
        model.head = None
    return model
