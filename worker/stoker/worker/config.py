"""Trainer configuration: YAML or JSON -> typed, validated dataclasses.

Every error names the offending field (``section.field``) and what to do about it.
Environment variables set by the operator override the checkpoint section
(``STOKER_CHECKPOINT_URI`` / ``_INTERVAL_STEPS`` / ``_KEEP``) and the metrics path
(``STOKER_METRICS_PATH``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Mapping

from stoker.common import env as stoker_env

METRICS_PATH_ENV = "STOKER_METRICS_PATH"

MODES = ("auto", "single", "ddp", "zero1", "zero2", "zero3", "pipeline-gpipe", "pipeline-1f1b")
FSDP_MODES = ("zero2", "zero3")
PIPELINE_MODES = ("pipeline-gpipe", "pipeline-1f1b")
ASYNC_MODES = ("async", "disabled")


class ConfigError(ValueError):
    """A configuration problem; the message names the field and the fix."""


@dataclasses.dataclass
class ModelConfig:
    size: str = "tiny"
    tie_embeddings: bool = False


@dataclasses.dataclass
class DataConfig:
    vocab_size: int = 64
    seq_len: int = 32
    train_samples: int = 4096
    val_samples: int = 64
    noise: float = 0.1
    # A sharded token dataset (s3://BUCKET/PREFIX or a directory; docs/datasets.md) instead of the
    # synthetic one: train_samples, val_samples and noise are then unused, seq_len must equal the
    # index's and vocab_size must be >= the index's (checked when the trainer opens it).
    uri: str | None = None
    cache_dir: str | None = None      # local shard cache (default ~/.cache/stoker/datasets)
    prefetch_shards: int = 2          # background shard downloads at once; 0: fetch when first read
    sample_log: str | None = None     # debug: a directory; each rank logs the samples it reads


@dataclasses.dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 10
    global_batch: int = 8
    micro_batch: int = 2
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    deterministic: bool = True
    num_threads: int | None = None
    max_tokens: int | None = None  # stop (Succeeded, TokenBudgetReached) once this many tokens are trained on


@dataclasses.dataclass
class ParallelConfig:
    mode: str = "auto"  # single for one process, ddp for more
    pp: int = 1
    dp: int | None = None  # default: world_size // pp
    bf16: bool = False
    fp16: bool = False                     # float16 autocast with dynamic loss scaling (precision.py)
    loss_scale: float = 65536.0            # fp16: the initial scale
    loss_scale_growth_interval: int = 2000  # fp16: clean steps before the scale doubles
    activation_checkpointing: bool = False
    cpu_offload: bool = False


@dataclasses.dataclass
class ValidationConfig:
    every: int = 0  # steps between validations (and at the last step); 0 = never
    samples: int = 16
    patience: int = 0       # stop (EarlyStopped) after this many validations without improvement; 0: never
    min_delta: float = 0.0  # what counts as an improvement of the validation loss


@dataclasses.dataclass
class CheckpointConfig:
    uri: str | None = None
    interval: int = 0  # steps; 0 = only at the end
    keep: int = 3
    async_mode: str = "async"
    init_from: str | None = None
    memory_every: int = 0  # steps; also keep each rank's state in the pod's memory (checkpoint/memory.py); 0 = off


@dataclasses.dataclass
class HealthConfig:
    """Anomalies caught at the step they happen (stoker.worker.health). Actions: ignore,
    report (log, metrics record, the operator's incident), rollback (reload the newest
    committed checkpoint before the anomaly and skip ``skip_batches`` batches from the one
    that made it), fail (exit 87: the operator fails the job with the reason)."""
    on_non_finite: str = "rollback"   # NaN/Inf loss or gradient norm
    on_spike: str = "report"          # loss / gradient-norm spikes
    loss_spike_z: float = 0.0         # robust z-score over `window` steps; 0: off
    grad_norm_spike_z: float = 0.0
    window: int = 50
    min_history: int = 10
    stall_fraction: float = 0.0       # report tokens/s below this fraction of the window median; 0: off
    stall_steps: int = 5
    skip_batches: int = 1
    max_rollbacks: int = 3            # one more anomaly to roll back fails the job (exit 87)
    # Sample ranges never trained on, "START:END,..." (global sample positions, half-open):
    # an undisturbed run that skips what a rollback skipped.
    skip: str = ""
    grad_norm_groups: bool = False    # also report each layer group's gradient norm (not in pipeline modes)


@dataclasses.dataclass
class OutputConfig:
    metrics_path: str | None = None
    summary_path: str | None = None


@dataclasses.dataclass
class DebugConfig:
    # After this step (and once any in-flight checkpoint is committed), stop making
    # progress and sleep, so a test can SIGKILL the job at a known point.
    stall_after_step: int | None = None
    # The save of this step stores every shard and DCP's .metadata, then holds back its
    # commit (stoker.json, COMMITTED) for slow_checkpoint_seconds (default: an hour, i.e.
    # until killed) on every rank, logging ``checkpoint.slow_write step=N``, so a test can
    # kill a worker while that checkpoint is half written. Only in a run that did not
    # resume from a checkpoint: the incarnation that recovers saves this step normally.
    slow_checkpoint_at_step: int | None = None
    slow_checkpoint_seconds: float | None = None
    # Poisoned data for health tests: a batch that starts in one of these global sample
    # ranges ("START:END,...") gets its loss multiplied by NaN (poison_kind nan) or by 1000
    # (spike). Not in pipeline modes.
    poison_samples: str = ""
    poison_kind: str = "nan"
    # Data-loader pauses for false-alarm drills, "STEP:SECONDS,...": before drawing the batch of
    # STEP the trainer sleeps SECONDS (heartbeats go on; step 1: a long first step). Only in a run
    # that did not resume from a checkpoint.
    data_pauses: str = ""
    # After SIGUSR1 this rank's next collective never completes (stoker.worker.drills.StuckCollective).
    stuck_collective_on_signal: bool = False


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    health: HealthConfig = dataclasses.field(default_factory=HealthConfig)
    debug: DebugConfig = dataclasses.field(default_factory=DebugConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], field)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{field}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {tp} for {field}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in raw.items():
        path = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, path)
        else:
            kwargs[name] = _coerce(value, tp, path)
    return cls(**kwargs)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config) -> Config:
    """World-size-independent checks (see ``validate_for_world`` for the rest)."""
    from stoker.worker.model import SIZES

    t, p, d, c = cfg.train, cfg.parallel, cfg.data, cfg.checkpoint
    _require(cfg.model.size in SIZES, f"model.size: unknown size {cfg.model.size!r} (choose one of {', '.join(SIZES)})")
    _require(p.mode in MODES, f"parallel.mode: unknown mode {p.mode!r} (choose one of {', '.join(MODES)})")
    _require(t.steps >= 1, f"train.steps: must be >= 1, got {t.steps}")
    _require(t.global_batch >= 1, f"train.global_batch: must be >= 1, got {t.global_batch}")
    _require(t.micro_batch >= 1, f"train.micro_batch: must be >= 1, got {t.micro_batch}")
    _require(t.global_batch % t.micro_batch == 0,
             f"train.global_batch ({t.global_batch}) must be a multiple of train.micro_batch ({t.micro_batch})")
    _require(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    _require(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio: must be in [0, 1], got {t.min_lr_ratio}")
    _require(0 <= t.warmup_steps <= t.steps,
             f"train.warmup_steps: must be in [0, train.steps={t.steps}], got {t.warmup_steps}")
    _require(t.grad_clip >= 0, f"train.grad_clip: must be >= 0 (0 disables), got {t.grad_clip}")
    _require(d.vocab_size >= 2, f"data.vocab_size: must be >= 2, got {d.vocab_size}")
    _require(d.seq_len >= 1, f"data.seq_len: must be >= 1, got {d.seq_len}")
    _require(d.uri is not None or d.train_samples >= t.global_batch,
             f"data.train_samples ({d.train_samples}) must be >= train.global_batch ({t.global_batch})")
    _validate_data_uri(d)
    _require(0 <= d.noise <= 1, f"data.noise: must be in [0, 1], got {d.noise}")
    _require(p.pp >= 1, f"parallel.pp: must be >= 1, got {p.pp}")
    _require(p.dp is None or p.dp >= 1, f"parallel.dp: must be >= 1 or omitted, got {p.dp}")
    if p.mode in PIPELINE_MODES:
        _require(p.pp >= 2, f"parallel.pp: pipeline mode {p.mode} needs parallel.pp >= 2, got {p.pp}")
        _require(not cfg.model.tie_embeddings,
                 "model.tie_embeddings: tied embeddings cannot be split across pipeline stages; set it to false")
    else:
        _require(p.pp == 1, f"parallel.pp: only pipeline modes use pp > 1 (mode is {p.mode}); set parallel.pp: 1")
    _require(not p.cpu_offload or p.mode in FSDP_MODES,
             f"parallel.cpu_offload: only zero2/zero3 can offload to CPU (mode is {p.mode})")
    _require(c.async_mode in ASYNC_MODES,
             f"checkpoint.async_mode: unknown {c.async_mode!r} (choose one of {', '.join(ASYNC_MODES)})")
    _require(c.interval >= 0, f"checkpoint.interval: must be >= 0 (0 = only at the end), got {c.interval}")
    _require(c.keep >= 1, f"checkpoint.keep: must be >= 1, got {c.keep}")
    _require(c.memory_every >= 0, f"checkpoint.memory_every: must be >= 0 (0 = off), got {c.memory_every}")
    _require(cfg.validation.every >= 0, f"validation.every: must be >= 0 (0 = never), got {cfg.validation.every}")
    v = cfg.validation
    _require(v.patience >= 0 and v.min_delta >= 0, "validation.patience and validation.min_delta: must be >= 0")
    _require(not v.patience or v.every, "validation.patience: early stopping needs validation.every > 0")
    _require(t.max_tokens is None or t.max_tokens >= 1, f"train.max_tokens: must be >= 1, got {t.max_tokens}")
    _require(cfg.validation.every == 0 or cfg.validation.samples >= 1,
             f"validation.samples: must be >= 1 when validation.every > 0")
    _require(cfg.validation.samples <= d.val_samples or cfg.validation.every == 0 or d.uri is not None,
             f"validation.samples ({cfg.validation.samples}) must be <= data.val_samples ({d.val_samples})")
    s = cfg.debug.stall_after_step
    _require(s is None or c.uri is not None, "debug.stall_after_step: needs checkpoint.uri (it stalls after that step's checkpoint)")
    from stoker.worker.config_checks import validate_health, validate_precision, validate_slow_checkpoint

    validate_slow_checkpoint(cfg)
    validate_health(cfg)
    validate_precision(cfg)
    return cfg



def _validate_data_uri(d: DataConfig) -> None:
    _require(d.prefetch_shards >= 0,
             f"data.prefetch_shards: must be >= 0 (0 = no background fetch), got {d.prefetch_shards}")
    if d.uri is None:
        _require(d.sample_log is None,
                 "data.sample_log: only sharded datasets log their samples; set data.uri or drop it")
        return
    _require(bool(d.uri.strip()),
             "data.uri: empty; give s3://BUCKET/PREFIX or a directory, or omit it for synthetic data")
    _require(d.uri.startswith("s3://") or "://" not in d.uri,
             f"data.uri: unsupported {d.uri!r}; use s3://BUCKET/PREFIX or a local directory")
    if d.uri.startswith("s3://"):
        _require(len(d.uri) > len("s3://") and not d.uri[len("s3://"):].startswith("/"),
                 f"data.uri: no bucket in {d.uri!r}; use s3://BUCKET/PREFIX")



def resolve_mode(mode: str, world_size: int) -> str:
    """``auto`` is ``single`` for one process and ``ddp`` for more."""
    if mode != "auto":
        return mode
    return "single" if world_size == 1 else "ddp"


def validate_for_world(cfg: Config, world_size: int) -> tuple[int, int]:
    """Checks that need the world size; returns (pp, dp)."""
    p, t = cfg.parallel, cfg.train
    p.mode = resolve_mode(p.mode, world_size)
    dp = p.dp if p.dp is not None else world_size // p.pp
    _require(p.pp * dp == world_size,
             f"parallel.pp ({p.pp}) x parallel.dp ({dp}) must equal the world size ({world_size}); "
             f"change parallel.pp/parallel.dp or the number of processes")
    _require(p.mode != "single" or world_size == 1,
             f"parallel.mode: 'single' runs one process, the world size is {world_size}; pick ddp/zero*/pipeline-*")
    _require(t.global_batch % (dp * t.micro_batch) == 0,
             f"train.global_batch ({t.global_batch}) must be divisible by data-parallel degree ({dp}) x "
             f"train.micro_batch ({t.micro_batch}); change train.global_batch or train.micro_batch")
    if p.mode in PIPELINE_MODES:
        n_micro = t.global_batch // (dp * t.micro_batch)
        _require(n_micro >= p.pp,
                 f"train.micro_batch: a pipeline step needs at least parallel.pp ({p.pp}) micro-batches per "
                 f"data-parallel rank, global_batch / (dp x micro_batch) = {n_micro}; lower train.micro_batch "
                 f"or raise train.global_batch")
    if cfg.validation.every:
        _require(cfg.validation.samples % (dp * t.micro_batch) == 0,
                 f"validation.samples ({cfg.validation.samples}) must be divisible by data-parallel degree ({dp}) "
                 f"x train.micro_batch ({t.micro_batch})")
        if p.mode in PIPELINE_MODES:
            _require(cfg.validation.samples % t.global_batch == 0,
                     f"validation.samples ({cfg.validation.samples}) must be a multiple of train.global_batch "
                     f"({t.global_batch}) in pipeline modes (validation runs whole pipeline schedules)")
    return p.pp, dp


def validate_for_device(cfg: Config, device_type: str) -> None:
    """Checks that need to know whether this process trains on a GPU."""
    _require(not cfg.parallel.cpu_offload or device_type == "cuda",
             "parallel.cpu_offload: offloading to CPU needs GPUs (this process trains on the CPU already); "
             "set parallel.cpu_offload: false")


def from_dict(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    from stoker.worker.config_checks import with_health_env

    cfg = _build(Config, with_health_env(raw, environ), "")
    if environ.get(stoker_env.CHECKPOINT_URI):
        cfg.checkpoint.uri = environ[stoker_env.CHECKPOINT_URI]
    for env_name, attr in ((stoker_env.CHECKPOINT_INTERVAL_STEPS, "interval"), (stoker_env.CHECKPOINT_KEEP, "keep"),
                           (stoker_env.CHECKPOINT_MEMORY_INTERVAL_STEPS, "memory_every")):
        if environ.get(env_name):
            try:
                setattr(cfg.checkpoint, attr, int(environ[env_name]))
            except ValueError:
                raise ConfigError(f"{env_name}: expected an integer, got {environ[env_name]!r}") from None
    if environ.get(METRICS_PATH_ENV):
        cfg.output.metrics_path = environ[METRICS_PATH_ENV]
    return validate(cfg)


def read_raw(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        raw = json.loads(text)
    else:
        import yaml
        raw = yaml.safe_load(text)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw or {}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``section.field=value`` (value parsed as YAML: 8, 3e-4, true, zero3)."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. train.steps=100")
        raw.setdefault(parts[0], {})
        if not isinstance(raw[parts[0]], dict):
            raise ConfigError(f"{parts[0]}: expected a mapping, got {type(raw[parts[0]]).__name__}")
        raw[parts[0]][parts[1]] = yaml.safe_load(value)
    return raw


def load(path: str | Path | None, environ: Mapping[str, str] | None = None,
         overrides: list[str] | None = None) -> Config:
    return from_dict(apply_overrides(read_raw(path), overrides or []), environ)
