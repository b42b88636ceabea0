"""Sharded token datasets in S3 (or a local directory): format, writer, reader.

``python -m stoker.worker.shards write ...`` writes one; ``data.uri`` in a trainer config
reads one (``dataset_for``). The format is described in docs/datasets.md and ``index.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free at import: the shard download process (fetchd.py) imports this package
    from stoker.worker.config import Config
    from stoker.worker.data import SyntheticLM

    from .reader import ShardedTokens


def dataset_for(cfg: "Config") -> "SyntheticLM | ShardedTokens":
    """The trainer's dataset: synthetic, or the sharded dataset at ``data.uri`` (checked
    against the config: seq_len must match the index, vocab_size must hold its tokens)."""
    from stoker.worker.data import SyntheticLM, SyntheticSpec

    d, t = cfg.data, cfg.train
    if d.uri is None:
        return SyntheticLM(SyntheticSpec(seed=t.seed, vocab_size=d.vocab_size, seq_len=d.seq_len,
                                         train_samples=d.train_samples, val_samples=d.val_samples, noise=d.noise))
    from .reader import ShardedTokens

    data = ShardedTokens(d.uri, cache_dir=d.cache_dir, prefetch_shards=d.prefetch_shards, sample_log=d.sample_log)
    check_against_config(data.spec, cfg)
    return data


def check_against_config(spec, cfg: "Config") -> None:
    """Raises ConfigError naming the field when the config does not fit the dataset's index."""
    from stoker.worker.config import ConfigError

    d, t, v = cfg.data, cfg.train, cfg.validation
    where = f"the dataset at {spec.uri}"
    if d.seq_len != spec.seq_len:
        raise ConfigError(f"data.seq_len ({d.seq_len}) differs from {where} (seq_len {spec.seq_len}); "
                          f"set data.seq_len: {spec.seq_len}")
    if d.vocab_size < spec.vocab_size:
        raise ConfigError(f"data.vocab_size ({d.vocab_size}) is smaller than {where} (vocab_size {spec.vocab_size});"
                          f" set data.vocab_size: {spec.vocab_size} (or more)")
    if spec.train_samples < t.global_batch:
        raise ConfigError(f"train.global_batch ({t.global_batch}) is more than {where} holds "
                          f"({spec.train_samples} train samples); lower it or write more data")
    if v.every and v.samples > spec.val_samples:
        raise ConfigError(f"validation.samples ({v.samples}) is more than {where} holds ({spec.val_samples} val "
                          f"samples); lower it, write the dataset with --val-samples >= {v.samples}, "
                          f"or set validation.every: 0")
