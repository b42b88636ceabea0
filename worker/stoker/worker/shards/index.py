"""The sharded token dataset format: ``index.json`` and the shard names (pure, no I/O).

A dataset is a directory or an S3 prefix holding::

    index.json                 written last: a dataset without it is incomplete and never read
    shard-00000.bin ...        train split: flat little-endian arrays of samples
    val/shard-00000.bin ...    validation split (optional)

Every sample is ``seq_len + 1`` tokens (inputs ``[:-1]``, targets ``[1:]``), stored as
``uint16`` when the vocabulary fits (<= 65536) else ``uint32``; sample ``i`` of a shard
starts at byte ``i * (seq_len + 1) * itemsize``. Optionally (``block_samples`` > 0) each
shard also lists a hash per block of ``block_samples`` rows, so a reader can check a ranged
read of a few rows without the whole shard. See docs/datasets.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where used: fetchd (index, cache) starts ~70 ms sooner without it
    import numpy as np

FORMAT = "stoker-tokens"
VERSION = 1
INDEX = "index.json"
SPLITS = ("train", "val")
SPLIT_DIRS = {"train": "", "val": "val/"}
DTYPES = {"uint16": "<u2", "uint32": "<u4"}  # NumPy dtype strings: little-endian, the size in bytes last
BLOCK_HASH_HEX = 32  # a block's hash: the first 128 bits of its sha256, in hex


class FormatError(ValueError):
    """An index.json that this reader cannot use; the message says what is wrong."""


def dtype_for(vocab_size: int) -> str:
    """The narrowest token type that holds every token id."""
    if vocab_size < 2 or vocab_size > 2**32:
        raise ValueError(f"vocab_size must be in [2, 2**32], got {vocab_size}")
    return "uint16" if vocab_size <= 2**16 else "uint32"


def shard_name(split: str, number: int) -> str:
    return f"{SPLIT_DIRS[split]}shard-{number:05d}.bin"


def block_hash(data: bytes | memoryview) -> str:
    """A block's hash as the index lists it (the first 128 bits of its sha256, hex)."""
    return hashlib.sha256(data).hexdigest()[:BLOCK_HASH_HEX]


def block_hashes(data: bytes, block_bytes: int) -> tuple[str, ...]:
    """The hashes of consecutive ``block_bytes`` blocks of a shard (the last may be shorter)."""
    view = memoryview(data)
    return tuple(block_hash(view[i:i + block_bytes]) for i in range(0, len(data), block_bytes))


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str  # relative to the dataset prefix
    samples: int
    bytes: int
    sha256: str
    blocks: tuple[str, ...] = ()  # block hashes (index.block_samples rows each); () in an index without them


@dataclasses.dataclass(frozen=True)
class Index:
    vocab_size: int
    seq_len: int
    dtype: str
    splits: dict[str, tuple[Shard, ...]]
    tokenizer: str = ""
    block_samples: int = 0  # rows per hashed block; 0: the shards list no block hashes

    @property
    def itemsize(self) -> int:
        return itemsize(self.dtype)

    @property
    def sample_bytes(self) -> int:
        return (self.seq_len + 1) * self.itemsize

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.splits.get(split, ()))

    def to_json(self) -> str:
        def shard(s: Shard) -> dict[str, Any]:
            d = dataclasses.asdict(s)
            if not s.blocks:
                del d["blocks"]
            return d

        body: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "tokenizer": self.tokenizer, "dtype": self.dtype,
            "vocab_size": self.vocab_size, "seq_len": self.seq_len,
            **({"block_samples": self.block_samples} if self.block_samples else {}),
            "splits": {name: {"samples": self.samples(name), "shards": [shard(s) for s in shards]}
                       for name, shards in self.splits.items()},
        }
        return json.dumps(body, indent=1) + "\n"


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise FormatError(f"{where}: {msg}")


def parse(text: str | bytes, where: str = INDEX) -> Index:
    """Read and check an index.json; raises FormatError naming the problem."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{where}: not JSON ({exc})") from None
    _need(isinstance(raw, dict) and raw.get("format") == FORMAT, where, f"not a {FORMAT} index")
    _need(raw.get("version") == VERSION, where,
          f"format version {raw.get('version')!r}; this reader reads version {VERSION} (upgrade stoker)")
    _need(raw.get("dtype") in DTYPES, where, f"dtype {raw.get('dtype')!r} (expected one of {', '.join(DTYPES)})")
    vocab, seq_len = raw.get("vocab_size"), raw.get("seq_len")
    _need(isinstance(vocab, int) and vocab >= 2, where, f"vocab_size {vocab!r} must be an integer >= 2")
    _need(isinstance(seq_len, int) and seq_len >= 1, where, f"seq_len {seq_len!r} must be an integer >= 1")
    _need(dtype_for(vocab) == raw["dtype"], where, f"dtype {raw['dtype']} does not fit vocab_size {vocab}")
    splits = raw.get("splits")
    _need(isinstance(splits, dict) and "train" in splits, where, "no 'train' split")
    _need(set(splits) <= set(SPLITS), where, f"unknown split(s) {sorted(set(splits) - set(SPLITS))}")
    block_samples = raw.get("block_samples", 0)
    _need(isinstance(block_samples, int) and block_samples >= 0, where,
          f"block_samples {block_samples!r} must be an integer >= 0")
    sample_bytes = (seq_len + 1) * itemsize(raw["dtype"])
    parsed = {name: _parse_split(body, f"{where} splits.{name}", sample_bytes, block_samples)
              for name, body in splits.items()}
    _need(sum(s.samples for s in parsed["train"]) >= 1, where, "the train split has no samples")
    return Index(vocab_size=vocab, seq_len=seq_len, dtype=raw["dtype"], splits=parsed,
                 tokenizer=str(raw.get("tokenizer", "")), block_samples=block_samples)


def _parse_blocks(s: dict, where: str, samples: int, block_samples: int) -> tuple[str, ...]:
    blocks = s.get("blocks", [])
    if not block_samples:
        _need(not blocks, where, "lists blocks but the index has no block_samples")
        return ()
    want = math.ceil(samples / block_samples)
    _need(isinstance(blocks, list) and len(blocks) == want, where,
          f"expected {want} block hashes (samples {samples} / block_samples {block_samples}), "
          f"got {len(blocks) if isinstance(blocks, list) else blocks!r}")
    _need(all(isinstance(b, str) and len(b) == BLOCK_HASH_HEX for b in blocks), where,
          f"block hashes must be {BLOCK_HASH_HEX} hex digits")
    return tuple(blocks)


def _parse_split(body: Any, where: str, sample_bytes: int, block_samples: int = 0) -> tuple[Shard, ...]:
    _need(isinstance(body, dict) and isinstance(body.get("shards"), list), where, "expected {samples, shards: [...]}")
    shards = []
    for i, s in enumerate(body["shards"]):
        try:
            shard = Shard(name=str(s["name"]), samples=int(s["samples"]), bytes=int(s["bytes"]),
                          sha256=str(s["sha256"]))
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{where}.shards[{i}]: expected name, samples, bytes, sha256") from None
        shard = dataclasses.replace(shard, blocks=_parse_blocks(s, f"{where}.shards[{i}]", shard.samples,
                                                                block_samples))
        _need(shard.bytes == shard.samples * sample_bytes, f"{where}.shards[{i}]",
              f"{shard.bytes} bytes is not samples ({shard.samples}) x {sample_bytes} bytes per sample")
        _need(len(shard.sha256) == 64, f"{where}.shards[{i}]", "sha256 must be 64 hex digits")
        _need(not shard.name.startswith("/") and ".." not in shard.name.split("/"), f"{where}.shards[{i}]",
              f"shard name {shard.name!r} must be relative to the dataset")
        shards.append(shard)
    _need(body.get("samples") == sum(s.samples for s in shards), where, "samples is not the sum over its shards")
    return tuple(shards)


def itemsize(dtype: str) -> int:
    """Bytes per token of a DTYPES name."""
    return int(DTYPES[dtype][2:])


def locate(offsets: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard number, row within it) of each sample id; ``offsets`` are the shards' first ids
    followed by the total."""
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= offsets[-1]):
        raise IndexError(f"sample id out of range [0, {int(offsets[-1])})")
    shard = np.searchsorted(offsets, ids, side="right") - 1
    return shard, ids - offsets[shard]


def offsets_of(shards: tuple[Shard, ...]) -> np.ndarray:
    import numpy as np

    return np.concatenate([[0], np.cumsum([s.samples for s in shards], dtype=np.int64)]).astype(np.int64)
