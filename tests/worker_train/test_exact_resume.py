"""Exact resume: 2N steps straight == N steps, SIGKILL of every process, resume, N more.

The killed run checkpoints every 2 steps to a local directory (async saves). Through
``debug.stall_after_step`` it stops making progress after step N+1 — one step past
the last checkpoint, whose work is lost — and the test then SIGKILLs torchrun and
every worker (workers run in their own sessions, so each one is killed by pid). The
restarted run (same command, same world size) must find the committed step-N
checkpoint on its own, redo step N+1 and finish with parameters bit-identical to
the uninterrupted run: checksum equality and exactly equal per-step losses.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from stoker.common import layout

from . import harness as h

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(600)]

N = 4
LAYOUTS = [("zero3", 2, {}), ("zero1", 2, {}), ("pipeline-1f1b", 2, {"pp": 2})]


@pytest.mark.parametrize("mode, nproc, extra", LAYOUTS, ids=[f"{m}-{n}" for m, n, _ in LAYOUTS])
def test_kill9_and_resume_is_bit_identical(tmp_path: Path, mode, nproc, extra):
    parallel = {"mode": mode, **extra}
    straight = h.run(tmp_path, "straight", h.base_config(tmp_path, "straight", parallel=parallel,
                                                          train={"steps": 2 * N}), nproc)

    ckpt = tmp_path / "ckpt"
    cfg = h.base_config(tmp_path, "job", parallel=parallel, train={"steps": 2 * N},
                        checkpoint={"uri": str(ckpt), "interval": 2, "async_mode": "async"},
                        debug={"stall_after_step": N + 1})
    killed_after = h.run_until_then_kill9(tmp_path, "job", cfg, nproc, ready=lambda: h.stalled(cfg))
    assert [m["step"] for m in h.read_metrics(cfg) if "loss" in m] == list(range(1, N + 2))
    assert (ckpt / layout.step_dir(N) / layout.COMMIT_MARKER).exists()
    # A partial write of a later step (no COMMITTED marker) must never be used.
    partial = ckpt / layout.step_dir(N + 2)
    partial.mkdir()
    (partial / layout.DCP_METADATA).write_bytes(b"garbage from a killed writer")

    cfg["debug"] = {}
    resumed = h.run(tmp_path, "job", cfg, nproc)  # same command line: it resumes on its own
    print(f"[{mode}] straight {straight['seconds']:.1f}s, killed after {killed_after:.1f}s, "
          f"resumed {resumed['seconds']:.1f}s")

    assert resumed["summary"]["resumed_from"] == N
    assert resumed["summary"]["step"] == 2 * N
    assert resumed["summary"]["checksum"] == straight["summary"]["checksum"], "parameters differ after resume"
    want = h.losses(straight["metrics"])
    got = h.losses(resumed["metrics"])  # steps 1..N from before the kill, N+1..2N after
    assert [m["step"] for m in resumed["metrics"] if "loss" in m] == list(range(1, 2 * N + 1))
    assert got == want, "losses must be exactly equal (same world size)"
    assert resumed["metrics"][-1]["tokens_seen"] == straight["metrics"][-1]["tokens_seen"]
    assert (ckpt / layout.step_dir(2 * N) / layout.COMMIT_MARKER).exists()
