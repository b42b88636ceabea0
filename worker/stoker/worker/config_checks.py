"""Checks of the trainer config split from config.py, which calls them: the ``health``
section and the operator's spec.health over it (``STOKER_HEALTH``), and fp16."""
from __future__ import annotations

import json
from typing import Any, Mapping

from stoker.common import env as stoker_env
from stoker.worker import health
from stoker.worker.config import FSDP_MODES, PIPELINE_MODES, Config, ConfigError, _require


def validate_health(cfg: Config) -> None:
    h, d = cfg.health, cfg.debug
    for name in ("on_non_finite", "on_spike"):
        v = getattr(h, name)
        _require(v in health.ACTIONS,
                 f"health.{name}: unknown action {v!r} (choose one of {', '.join(health.ACTIONS)})")
    for name in ("loss_spike_z", "grad_norm_spike_z", "stall_fraction"):
        _require(getattr(h, name) >= 0, f"health.{name}: must be >= 0 (0 turns it off), got {getattr(h, name)}")
    _require(h.stall_fraction < 1, f"health.stall_fraction: must be < 1, got {h.stall_fraction}")
    for name in ("window", "min_history", "stall_steps", "skip_batches"):
        _require(getattr(h, name) >= 1, f"health.{name}: must be >= 1, got {getattr(h, name)}")
    _require(h.max_rollbacks >= 0, f"health.max_rollbacks: must be >= 0, got {h.max_rollbacks}")
    for field, text in (("health.skip", h.skip), ("debug.poison_samples", d.poison_samples)):
        try:
            health.parse_ranges(text, field)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    _require(not h.grad_norm_groups or cfg.parallel.mode not in PIPELINE_MODES,
             f"health.grad_norm_groups: not in pipeline modes ({cfg.parallel.mode}: a stage holds some layers only)")
    try:
        health.parse_pauses(d.data_pauses)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _require(d.poison_kind in ("nan", "spike"), f"debug.poison_kind: unknown {d.poison_kind!r} (choose nan or spike)")
    _require(not d.poison_samples or cfg.parallel.mode not in PIPELINE_MODES,
             f"debug.poison_samples: not supported with parallel.mode {cfg.parallel.mode}; use ddp or zero*")


def with_health_env(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Mapping[str, Any]:
    """The operator's spec.health (``STOKER_HEALTH``, a JSON object of health.* fields) over the file's."""
    text = environ.get(stoker_env.HEALTH)
    if not text:
        return raw
    try:
        over = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{stoker_env.HEALTH}: not JSON ({exc})") from None
    if not isinstance(over, dict):
        raise ConfigError(f"{stoker_env.HEALTH}: expected a JSON object of health.* fields, got {text!r}")
    base = raw.get("health") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"health: expected a mapping, got {type(base).__name__}")
    merged = {**base, **over}
    if base.get("skip") and over.get("skip"):  # ranges the file skips and ranges rollbacks skipped
        merged["skip"] = f"{base['skip']},{over['skip']}"
    return {**raw, "health": merged}


def validate_precision(cfg: Config) -> None:
    p = cfg.parallel
    _require(not (p.fp16 and p.bf16), "parallel.fp16 and parallel.bf16: pick one (bf16 needs no loss scaling)")
    _require(not p.fp16 or p.mode not in (*FSDP_MODES, *PIPELINE_MODES, "zero1"),
             f"parallel.fp16: loss scaling runs with modes single and ddp, not {p.mode}; use parallel.bf16 there")
    _require(p.loss_scale > 0, f"parallel.loss_scale: must be > 0, got {p.loss_scale}")
    _require(p.loss_scale_growth_interval >= 1,
             f"parallel.loss_scale_growth_interval: must be >= 1, got {p.loss_scale_growth_interval}")


def validate_slow_checkpoint(cfg: Config) -> None:
    at, secs, c, steps = cfg.debug.slow_checkpoint_at_step, cfg.debug.slow_checkpoint_seconds, cfg.checkpoint, cfg.train.steps
    _require(secs is None or at is not None,
             "debug.slow_checkpoint_seconds: only used with debug.slow_checkpoint_at_step; set that too or drop it")
    _require(secs is None or secs > 0, f"debug.slow_checkpoint_seconds: must be > 0, got {secs}")
    if at is None:
        return
    _require(c.uri is not None, "debug.slow_checkpoint_at_step: needs checkpoint.uri (it slows that step's checkpoint)")
    _require(1 <= at <= steps, f"debug.slow_checkpoint_at_step: must be in [1, train.steps={steps}], got {at}")
    _require((c.interval and at % c.interval == 0) or at == steps,
             f"debug.slow_checkpoint_at_step: step {at} is not a checkpoint step (checkpoint.interval={c.interval}, "
             f"train.steps={steps}); use a multiple of checkpoint.interval or train.steps")
