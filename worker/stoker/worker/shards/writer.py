"""Writes a sharded token dataset: text files -> tokens -> fixed-length samples -> shards.

Shards are uploaded as they fill; ``index.json`` is uploaded last, so a writer that dies
half way leaves no dataset a reader would use. A target that already holds an index is
refused: a dataset is never rewritten in place (readers may be using it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from . import index as fmt
from .storage import LocalPrefix, S3Prefix, open_prefix

log = logging.getLogger("stoker.worker.shards")

READ_CHUNK = 4 << 20
BLOCK_TARGET_BYTES = 16 << 10  # a hashed block holds at least this many bytes of rows ...
MAX_BLOCKS_PER_SHARD = 256     # ... and a shard at most this many blocks (the index stays small)
DOC_SEPARATOR = 0  # the byte tokenizer's end-of-document token, written after every file


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    encode: Callable[[bytes], np.ndarray]
    end_of_document: int


def _bytes_encode(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


TOKENIZERS = {"bytes": Tokenizer("bytes", 256, _bytes_encode, DOC_SEPARATOR)}


class WriteError(ValueError):
    """A problem with the writer's inputs; the message names the flag and the fix."""


def default_block_samples(sample_bytes: int, shard_samples: int) -> int:
    """Rows per hashed block: about 16 KiB (what a reader fetches at least to check one row),
    more when a shard would otherwise list over 256 block hashes."""
    by_size = -(-BLOCK_TARGET_BYTES // sample_bytes)
    return max(1, min(shard_samples, max(by_size, -(-shard_samples // MAX_BLOCKS_PER_SHARD))))


def token_stream(paths: Iterable[Path], tok: Tokenizer) -> Iterator[np.ndarray]:
    """Each file's tokens in chunks, followed by the end-of-document token."""
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield tok.encode(chunk)
        yield np.array([tok.end_of_document])


class _ShardSink:
    """Collects samples of one split and uploads a shard whenever ``shard_samples`` are in."""

    def __init__(self, target: LocalPrefix | S3Prefix, split: str, *, shard_samples: int, sample_len: int,
                 dtype: np.dtype, scratch: Path, block_samples: int):
        self.target, self.split, self.scratch = target, split, scratch
        self.block_bytes = block_samples * sample_len * dtype.itemsize
        self.buf = np.empty((shard_samples, sample_len), dtype=dtype)
        self.filled = 0
        self.shards: list[fmt.Shard] = []

    def add(self, samples: np.ndarray) -> np.ndarray:
        """Take as many of ``samples`` as fit in the current shard; return the rest."""
        take = min(len(samples), len(self.buf) - self.filled)
        self.buf[self.filled:self.filled + take] = samples[:take]
        self.filled += take
        if self.filled == len(self.buf):
            self.flush()
        return samples[take:]

    def flush(self) -> None:
        if not self.filled:
            return
        data = self.buf[:self.filled].tobytes()
        name = fmt.shard_name(self.split, len(self.shards))
        path = self.scratch / "shard.bin"
        path.write_bytes(data)
        self.target.upload(path, name)
        self.shards.append(fmt.Shard(name=name, samples=self.filled, bytes=len(data),
                                     sha256=hashlib.sha256(data).hexdigest(),
                                     blocks=fmt.block_hashes(data, self.block_bytes)))
        log.info("shards.wrote name=%s samples=%d bytes=%d", name, self.filled, len(data))
        self.filled = 0


def write_dataset(inputs: list[str | Path], target_uri: str, *, seq_len: int, shard_samples: int,
                  tokenizer: str = "bytes", val_samples: int = 0, block_samples: int | None = None) -> fmt.Index:
    """Tokenize ``inputs`` into a dataset at ``target_uri``; the first ``val_samples``
    samples form the val split; each shard lists a hash per ``block_samples`` rows (default:
    ``default_block_samples``). Returns the index it wrote."""
    tok = _check_args(inputs, seq_len=seq_len, shard_samples=shard_samples, tokenizer=tokenizer,
                      val_samples=val_samples)
    target = open_prefix(target_uri)
    if target.read_bytes(fmt.INDEX) is not None:
        raise WriteError(f"{target_uri} already holds a dataset ({fmt.INDEX}); write to a new prefix "
                         f"(a dataset is never rewritten in place: readers may be using it)")
    dtype = np.dtype(fmt.DTYPES[fmt.dtype_for(tok.vocab_size)])
    if block_samples is None:
        block_samples = default_block_samples((seq_len + 1) * dtype.itemsize, shard_samples)
    if block_samples < 1:
        raise WriteError(f"--block-samples: must be >= 1, got {block_samples}")
    with tempfile.TemporaryDirectory(prefix="stoker-shards-") as scratch:
        sinks = {split: _ShardSink(target, split, shard_samples=shard_samples, sample_len=seq_len + 1,
                                   dtype=dtype, scratch=Path(scratch), block_samples=block_samples)
                 for split in fmt.SPLITS}
        dropped = _fill(sinks, token_stream([Path(p) for p in inputs], tok), seq_len + 1, val_samples)
        for sink in sinks.values():
            sink.flush()
    splits = {split: tuple(sink.shards) for split, sink in sinks.items() if sink.shards or split == "train"}
    idx = fmt.Index(vocab_size=tok.vocab_size, seq_len=seq_len, dtype=fmt.dtype_for(tok.vocab_size),
                    splits=splits, tokenizer=tok.name, block_samples=block_samples)
    if idx.samples("val") < val_samples or idx.samples("train") < 1:
        raise WriteError(f"the inputs make {idx.samples('val') + idx.samples('train')} samples of --seq-len+1 = "
                         f"{seq_len + 1} tokens, fewer than --val-samples ({val_samples}) + 1 train sample; "
                         f"add text, lower --seq-len or --val-samples (nothing was committed: no {fmt.INDEX})")
    target.put_bytes(fmt.INDEX, idx.to_json().encode())  # the commit: last, so half a dataset is never read
    log.info("shards.committed uri=%s train=%d val=%d dropped_tail_tokens=%d", target_uri,
             idx.samples("train"), idx.samples("val"), dropped)
    return idx


def _fill(sinks: dict[str, _ShardSink], stream: Iterator[np.ndarray], sample_len: int, val_samples: int) -> int:
    """Cut the token stream into samples; returns how many tail tokens made no whole sample."""
    pending = np.empty(0, dtype=np.int64)
    to_val = val_samples
    for chunk in stream:
        pending = np.concatenate([pending, chunk.astype(np.int64)])
        whole = len(pending) // sample_len
        samples = pending[:whole * sample_len].reshape(whole, sample_len)
        pending = pending[whole * sample_len:]
        n_val = min(to_val, len(samples))
        _add_all(sinks["val"], samples[:n_val])
        _add_all(sinks["train"], samples[n_val:])
        to_val -= n_val
    return len(pending)


def _add_all(sink: _ShardSink, samples: np.ndarray) -> None:
    while len(samples):
        samples = sink.add(samples)


def _check_args(inputs: list[str | Path], *, seq_len: int, shard_samples: int, tokenizer: str,
                val_samples: int) -> Tokenizer:
    if tokenizer not in TOKENIZERS:
        raise WriteError(f"--tokenizer: unknown {tokenizer!r} (choose one of {', '.join(TOKENIZERS)})")
    if seq_len < 1:
        raise WriteError(f"--seq-len: must be >= 1, got {seq_len}")
    if shard_samples < 1:
        raise WriteError(f"--shard-samples: must be >= 1, got {shard_samples}")
    if val_samples < 0:
        raise WriteError(f"--val-samples: must be >= 0, got {val_samples}")
    if not inputs:
        raise WriteError("no input files: name one or more text files before the target")
    for p in inputs:
        if not Path(p).is_file():
            raise WriteError(f"input {str(p)!r} is not a file (inputs are text files; the target comes last)")
    return TOKENIZERS[tokenizer]
