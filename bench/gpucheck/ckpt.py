"""Async checkpoint from device memory, exact resume in a new process, plain DCP load.

Three child processes of this script run the trainer's own loop (``Trainer.run``):

- A: ``ck_steps`` steps, an async checkpoint every ``ck_interval`` steps to a local dir
  (staged from device memory by the CheckpointManager while training goes on);
- C: the same run without checkpoints (does saving perturb training?);
- B: a new process resuming from A's checkpoint at ``ck_interval`` (hard-linked into
  its own dir), trained to ``ck_steps``.

Exact resume holds when B's parameters are bit-identical to A's (sha256 per tensor).
A's last checkpoint is also read back with plain ``torch.distributed.checkpoint`` and
its model tensors compared with A's parameters.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .build import Profile, make_trainer, train_config
from .measure import differing_names, summarize
from .observe import RecordingSession

CHILD_FLAG = "--child"


# ------------------------------------------------------------------------ the child
def child_main(spec_path: Path) -> int:
    """Run one trainer to the end as a child; write what the parent needs."""
    import torch

    from stoker.worker.checksum import combine, local_digests

    spec = json.loads(spec_path.read_text())
    session = RecordingSession()
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(spec["config"], session)
        built = time.monotonic()
        summary = trainer.run()
        ran = time.monotonic()
    digests = local_digests(trainer.parts)
    staging = compare_staging(trainer) if spec.get("staging") and trainer.device.type == "cuda" else None
    trainer.close()
    result = {
        "summary": summary, "checksum": combine([digests]), "digests": digests,
        "resumed_step": session.resumed_step, "saves": session.save_report(),
        "steps": [{k: s.get(k) for k in ("step", "loss", "step_time_seconds")} for s in session.steps],
        "warnings": sorted({f"{w.category.__name__}: {w.message}"[:400] for w in caught})[:20],
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "seconds": {"build": built - t0, "run": ran - built, "total": time.monotonic() - t0},
        "staging": staging,
    }
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


def compare_staging(trainer) -> dict[str, Any]:
    """How long copying the model + optimizer state out of GPU memory holds the loop:
    the CheckpointManager's staging (pageable, blocking) vs pinned host buffers. Three
    stagings each; the first allocates (and pins) the host buffers, later ones reuse them."""
    import torch
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    from stoker.worker.state import MODEL, OPTIMIZER

    state = {k: trainer.checkpoint_state[k].state_dict() for k in (MODEL, OPTIMIZER)}
    nbytes = sum(t.numel() * t.element_size() for part in state.values() for t in part.values()
                 if isinstance(t, torch.Tensor))
    out: dict[str, Any] = {"bytes": nbytes}
    for name, pinned, non_blocking in (("pageable_blocking_manager", False, False), ("pinned_blocking", True, False),
                                       ("pinned_non_blocking", True, True)):
        stager = DefaultStager(StagingOptions(use_pinned_memory=pinned, use_shared_memory=False,
                                              use_async_staging=False, use_non_blocking_copy=non_blocking))
        seconds = []
        try:
            for _ in range(3):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                staged = stager.stage(state)
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t0)
                del staged
        except Exception as exc:  # noqa: BLE001 - recorded: a staging mode that fails here is a finding
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000], "seconds": seconds}
            continue
        finally:
            stager.close()
        steady = min(seconds[1:])
        out[name] = {"seconds": seconds, "steady_s": steady, "gb_per_s": nbytes / steady / 1e9}
    return out


# ----------------------------------------------------------------------- the parent
def estimated_checkpoint_bytes(n_params: int) -> int:
    return n_params * 4 * 3  # fp32 parameters + AdamW exp_avg + exp_avg_sq


def run_child(script: Path, work: Path, name: str, spec: dict[str, Any], deadline: float) -> dict[str, Any]:
    spec_path, result_path, log_path = (work / f"{name}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    timeout = max(10.0, deadline - time.monotonic())
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, str(script), CHILD_FLAG, str(spec_path)], stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"child {name} killed after {timeout:.0f}s (time budget); log tail: "
                               f"{tail(log_path)}") from None
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"child {name} exited {proc.returncode}; log tail: {tail(log_path)}")
    return json.loads(result_path.read_text())


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def link_step(src_root: Path, dst_root: Path, step: int) -> None:
    """Put checkpoint ``step`` of src_root into dst_root (hard links: no extra disk)."""
    from stoker.common import layout

    src, dst = src_root / layout.step_dir(step), dst_root / layout.step_dir(step)
    dst.mkdir(parents=True)
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def plain_dcp_load(path: Path) -> dict[str, Any]:
    """Read a Stoker checkpoint folder with nothing but torch.distributed.checkpoint
    (no Stoker code, no process group): every tensor, plus the train step."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    t0 = time.monotonic()
    reader = dcp.FileSystemReader(str(path))
    meta = reader.read_metadata().state_dict_metadata
    state: dict[str, Any] = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
                             if isinstance(m, TensorStorageMetadata)}
    state["train_state.step"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {"state": state, "seconds": time.monotonic() - t0}


def model_checksum_of(state: dict[str, Any]) -> tuple[str, dict]:
    """The trainer's checksum (stoker.worker.checksum) over the ``model.*`` tensors."""
    from stoker.worker.checksum import combine, tensor_digest

    digests = {k[len("model."):]: (str(t.dtype), str(tuple(t.shape)), tensor_digest(t))
               for k, t in state.items() if k.startswith("model.")}
    return combine([digests]), digests


def async_checkpoint(profile: Profile, device_type: str, script: Path, workdir: Path, deadline: float) -> dict:
    from stoker.common import layout
    from stoker.worker.model import GPT, model_args

    import torch

    work = workdir / "async_checkpoint"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    k, n = profile.ck_interval, profile.ck_steps
    with torch.device("meta"):
        n_params = GPT(model_args(profile.size, vocab_size=profile.vocab_size, max_seq_len=profile.seq_len)).num_params()
    est = estimated_checkpoint_bytes(n_params)
    free = shutil.disk_usage(work).free
    if free < 2.2 * est:
        raise RuntimeError(f"--workdir {workdir}: {free / 1e9:.1f} GB free, this check keeps two checkpoints of "
                           f"~{est / 1e9:.1f} GB; pass --workdir on a disk with {2.2 * est / 1e9:.0f} GB free")

    def config(uri: str | None) -> dict:
        ck = {"uri": uri, "interval": k, "keep": 3, "async_mode": "async"} if uri else None
        return train_config(profile, micro=profile.ck_micro, global_batch=profile.ck_micro, steps=n,
                            bf16=device_type == "cuda", lr=1e-3 if device_type == "cuda" else 3e-3, checkpoint=ck)

    out: dict[str, Any] = {"steps": n, "interval": k, "parameters": n_params, "estimated_checkpoint_bytes": est,
                           "config": config(str(work / "a"))}
    a = run_child(script, work, "a_uninterrupted", {"config": config(str(work / "a")), "staging": True}, deadline)
    plain = plain_dcp_load(work / "a" / layout.step_dir(n))
    plain_checksum, _ = model_checksum_of(plain["state"])
    out["plain_dcp_load"] = {
        "step_dir": layout.step_dir(n), "tensors": sum(1 for v in plain["state"].values() if isinstance(v, torch.Tensor)),
        "bytes": sum(v.numel() * v.element_size() for v in plain["state"].values() if isinstance(v, torch.Tensor)),
        "seconds": plain["seconds"], "train_state_step": plain["state"]["train_state.step"],
        "model_matches_run": plain_checksum == a["checksum"]}
    del plain
    shutil.rmtree(work / "a" / layout.step_dir(n))  # room for B's checkpoint of the same size
    c = run_child(script, work, "c_no_checkpoints", {"config": config(None)}, deadline)
    link_step(work / "a", work / "b", k)
    b = run_child(script, work, "b_resumed", {"config": config(str(work / "b"))}, deadline)
    out["saves"] = a["saves"]
    # save() itself: state_dict + copy to host memory (the manager's blocked_s)
    out["blocked_s"] = summarize([s["blocked_s"] for s in a["saves"]])
    # the trainer's whole CHECKPOINTING phase: also waits for the previous save to commit
    out["loop_blocked_s"] = summarize([s["loop_blocked_s"] for s in a["saves"] if "loop_blocked_s" in s])
    out["step_time_s"] = summarize([s["step_time_seconds"] for s in a["steps"]])
    out["staging"] = a["staging"]
    out["exact_resume"] = {
        "resumed_from": b["summary"]["resumed_from"], "expected_resume_step": k,
        "bit_identical": b["checksum"] == a["checksum"] and b["summary"]["resumed_from"] == k,
        "saving_does_not_perturb": c["checksum"] == a["checksum"],
        "checksums": {"a_uninterrupted": a["checksum"], "b_resumed": b["checksum"], "c_no_checkpoints": c["checksum"]},
        "differing_b_vs_a": differing_names(a["digests"], b["digests"]),
        "differing_c_vs_a": differing_names(a["digests"], c["digests"]),
        "losses": {name: [s["loss"] for s in r["steps"]] for name, r in
                   (("a_uninterrupted", a), ("b_resumed", b), ("c_no_checkpoints", c))},
        "deterministic": {"enabled": a["deterministic"], "warn_only": a["deterministic_warn_only"]},
    }
    out["children"] = {name: {"seconds": r["seconds"], "warnings": r["warnings"]} for name, r in
                       (("a_uninterrupted", a), ("b_resumed", b), ("c_no_checkpoints", c))}
    shutil.rmtree(work, ignore_errors=True)
    return out
