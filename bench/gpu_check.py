"""The trainer on a real GPU: MFU, FSDP2 CPU offload, async checkpoints from GPU memory, exact resume.

At world size 1, writing one JSON (torch/CUDA versions, device, commit, command line,
raw samples; every section's status and, when it failed, why):

- ``peak``: the chip's dense bf16 matmul peak, measured now (large square matmuls);
- ``throughput``: the built-in GPT (``1b``: d_model 2048, 18 layers, vocab 50304,
  seq 2048) through ``Trainer.train_step`` in bf16 autocast: the trainer's defaults,
  + activation checkpointing, without deterministic algorithms, and + ``torch.compile``
  per block; tokens/s and MFU (formula in the JSON: 6N + 12·L·d·T per token over the
  measured peak), data and optimizer time per step, peak memory;
- ``fsdp_offload``: FSDP2 zero3 with CPU offload vs without, a few steps, per-step loss
  agreement within rtol 1e-3;
- ``async_checkpoint``: async DCP checkpoints from GPU memory to local disk while
  training goes on (how long the loop was held, steps trained before the commit), exact
  resume in a new process (bit-identical parameters vs an uninterrupted run, and vs a
  run without checkpoints), the checkpoint read back with plain
  ``torch.distributed.checkpoint``, and pinned vs pageable staging times.

Needs only torch, numpy and this repository (no install). On the lent GPU machine the
device tool runs this in the repository root (``timeout_s`` 600)::

    PY=$(for p in python3 python; do $p -c 'import torch' 2>/dev/null && echo $p && break; done); PYTHONPATH=worker:common $PY bench/gpu_check.py --out $OUT/gpu_check.json --commit COMMIT

with ``COMMIT`` = ``git rev-parse HEAD`` of the checkout sent (the device copy has no
.git; ``source_sha256`` in the JSON names the code either way). It stops starting work
after ``--budget-s`` (450 s) and records what did not fit as skipped; checkpoints go to
``--workdir`` (default: the temp dir or ``.gpu_check_work``, whichever has more room;
~30 GB for 1b). To rerun only some parts: ``--sections async_checkpoint,...``. Copy
``$OUT/gpu_check.json`` to ``bench/results/gpu_check.json`` unchanged.
CI runs every section on the CPU: ``python bench/gpu_check.py --device cpu --tiny --out X``
(tests/worker_train/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.* (as the other benchmarks do)
for _p in (ROOT / "worker", ROOT / "common"):  # stoker.worker / stoker.common without an install
    if str(_p) not in sys.path:
        sys.path.append(str(_p))

SECTIONS = ("peak", "throughput", "fsdp_offload", "async_checkpoint", "throughput_compiled")
SOURCES = ("worker/stoker/worker", "common/stoker/common", "bench/gpucheck", "bench/gpu_check.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--tiny", action="store_true", help="tiny model, few steps (every section on a CPU in seconds)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    p.add_argument("--workdir", type=Path, help="for checkpoints, ~30 GB for 1b (default: the temp dir or "
                   ".gpu_check_work in the repository, whichever disk has more room)")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting work after this many seconds")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the throughput_compiled section (default: on CUDA only)")
    p.add_argument("--commit", default=os.environ.get("STOKER_COMMIT"), help="recorded when git is unavailable")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)} (choose from {', '.join(SECTIONS)})")
    return args


def source_digest() -> str:
    """sha256 over the code this check runs, so a result names its code without git."""
    h = hashlib.sha256()
    for rel in SOURCES:
        path = ROOT / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def git_commit(fallback: str | None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return fallback


def choose_workdir(given: Path | None) -> Path:
    if given is not None:
        return given
    candidates = [Path(tempfile.gettempdir()) / "gpu_check", ROOT / ".gpu_check_work"]
    return max(candidates, key=lambda p: shutil.disk_usage(p.parent).free)


def nvidia_smi() -> str | None:
    query = "name,driver_version,power.limit,clocks.max.sm,clocks.sm,temperature.gpu,memory.total"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"


def environment(device) -> dict[str, Any]:
    import numpy
    import torch

    env: dict[str, Any] = {
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "numpy": numpy.__version__,
        "python": sys.version.split()[0], "device": str(device),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if device.type == "cuda":
        probes = {
            "device_name": lambda: torch.cuda.get_device_name(device),
            "capability": lambda: ".".join(map(str, torch.cuda.get_device_capability(device))),
            "device_memory_gib": lambda: torch.cuda.get_device_properties(device).total_memory / 2**30,
            "cudnn": torch.backends.cudnn.version,
            "nccl": lambda: str(torch.cuda.nccl.version()),
            "nvidia_smi": nvidia_smi,
        }
        for key, probe in probes.items():
            try:
                env[key] = probe()
            except Exception as exc:  # noqa: BLE001 - a missing detail must not stop the check
                env[key] = f"unavailable: {exc!r}"
    return env


def run_section(results: dict, name: str, fn: Callable[[], dict] | str, deadline: float,
                write: Callable[[], None]) -> None:
    """Run one section; ``fn`` a string: skipped for that reason."""
    if isinstance(fn, str) or time.monotonic() > deadline:
        results["sections"][name] = {"status": "skipped", "seconds": 0.0,
                                     "reason": fn if isinstance(fn, str) else "time budget spent"}
    else:
        t0 = time.monotonic()
        try:
            results["sections"][name] = {"status": "ok", **fn()}
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt aside, record and go on
            if isinstance(exc, KeyboardInterrupt):
                raise
            results["sections"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:4000],
                                         "traceback": traceback.format_exc()[-4000:]}
        results["sections"][name]["seconds"] = time.monotonic() - t0
    write()


def failures(sections: dict) -> list[str]:
    out = [name for name, s in sections.items() if s["status"] == "failed"]
    for name, s in sections.items():
        out += [f"{name}.{v}" for v, r in s.get("variants", {}).items() if r["status"] == "failed"]
        out += [f"{name}.staging.{m}" for m, r in (s.get("staging") or {}).items() if isinstance(r, dict) and "error" in r]
    return out


def headline(sections: dict) -> dict[str, Any]:
    tp = [sections.get(k, {}) for k in ("throughput", "throughput_compiled")]
    fs, ck = (sections.get(k, {}) for k in ("fsdp_offload", "async_checkpoint"))
    return {"peak_tflops": sections.get("peak", {}).get("peak_tflops"),
            "best_mfu": max((t["best_mfu"] for t in tp if t.get("best_mfu") is not None), default=None),
            "best_tokens_per_s": max((t["best_tokens_per_s"] for t in tp if t.get("best_tokens_per_s")), default=None),
            "offload_losses_agree": fs.get("agree"),
            "async_blocked_s": ck.get("blocked_s"), "async_loop_blocked_s": ck.get("loop_blocked_s"),
            "exact_resume_bit_identical": ck.get("exact_resume", {}).get("bit_identical"),
            "plain_dcp_load_matches": ck.get("plain_dcp_load", {}).get("model_matches_run")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA (children inherit it)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call (exact resume)
    import torch

    from bench.common import machine_info, write_json
    from bench.gpucheck import build, ckpt, sections

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda: torch {torch.__version__} sees no CUDA device; run it on the GPU machine "
              f"or pass --device cpu", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    profile = build.TINY if args.tiny else build.GPU
    compile_ok = args.compile if args.compile is not None else device.type == "cuda"
    workdir = choose_workdir(args.workdir)
    wanted = args.sections.split(",")
    results: dict[str, Any] = {
        "benchmark": "gpu_check", "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join([sys.executable, *sys.argv]), "commit": git_commit(args.commit),
        "source_sha256": source_digest(), "machine": machine_info(), "env": environment(device),
        "profile": vars(profile) | {"peak_sizes": list(profile.peak_sizes)}, "budget_s": args.budget_s,
        "workdir": str(workdir), "sections": {},
    }

    def write() -> None:
        results["failed"] = failures(results["sections"])
        results["headline"] = headline(results["sections"])
        results["seconds"] = time.monotonic() - started
        write_json(args.out, results)

    def peak_tflops() -> float | None:
        return results["sections"].get("peak", {}).get("peak_tflops")

    steps: dict[str, Callable[[], dict] | str] = {
        "peak": lambda: sections.peak(profile, device),
        "throughput": lambda: sections.throughput(profile, device, peak_tflops(), variants=sections.EAGER_VARIANTS,
                                                  deadline=deadline),
        "fsdp_offload": lambda: sections.fsdp_offload(profile, device),
        "async_checkpoint": lambda: ckpt.async_checkpoint(profile, device.type, Path(__file__).resolve(),
                                                          workdir, deadline),
        "throughput_compiled": (lambda: sections.throughput(profile, device, peak_tflops(),
                                                            variants=sections.COMPILED_VARIANTS, deadline=deadline))
        if compile_ok else "torch.compile not requested (off by default on the CPU: --compile turns it on)",
    }
    for name in SECTIONS:
        if name in wanted:
            print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
            run_section(results, name, steps[name], deadline, write)
            print(f"gpu_check: {name} {results['sections'][name]['status']} "
                  f"({results['sections'][name]['seconds']:.1f}s)", file=sys.stderr, flush=True)
    print(f"gpu_check: wrote {args.out}; failed: {results['failed'] or 'none'}", file=sys.stderr)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        from bench.gpucheck.ckpt import child_main

        sys.exit(child_main(Path(sys.argv[2])))
    sys.exit(main())
