"""The trainer config's ``health`` section: its checks, and the operator's spec.health over it
(``STOKER_HEALTH``). Split from config.py, which calls these."""
from __future__ import annotations

import json
from typing import Any, Mapping

from stoker.common import env as stoker_env
from stoker.worker import health
from stoker.worker.config import PIPELINE_MODES, Config, ConfigError, _require


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
