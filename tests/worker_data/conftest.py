"""Dataset-test fixtures: a small corpus, and the checkpoint tests' MinIO environment."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.worker_ckpt.conftest import s3_env  # noqa: F401  (the cluster's MinIO in os.environ)

WORDS = ("the quick brown fox jumps over a lazy dog while stoker trains tiny models on sharded tokens "
         "from object storage and resumes them exactly").split()


def write_corpus(folder: Path, files: int = 3, words: int = 3000, seed: int = 0) -> list[Path]:
    """Deterministic text files (a few KiB each)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"doc{i}.txt"
        path.write_text(" ".join(rng.choice(WORDS) for _ in range(words)))
        paths.append(path)
    return paths


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    return write_corpus(tmp_path / "corpus")
