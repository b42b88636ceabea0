"""Where the Stoker operator's memory goes per job: a probe, not a benchmark with goals.

One operator (the same process bench_operator_scale.py starts, run under tracemalloc by this
module's ``--as-operator`` mode) in a fresh namespace on kwok GPU nodes; jobs are added in equal
steps (``--step`` jobs x ``--workers``), and after each step, once every pod is Running and
``--settle`` seconds have passed, the operator writes a snapshot on SIGUSR1: its RSS and peak RSS
(VmRSS, VmHWM), the bytes tracemalloc traces, Python objects by type (gc) and a tracemalloc
snapshot. Printed and written: per step the totals, and per job the growth between the first and
the last step (RSS, peak, traced) with the allocation sites and object types that grew most.
``--baseline REF``: the operator code of commit REF too, side by side with the working tree's in
the same cluster, ``--reps`` times each, interleaved (median [min, max] of the growth per job).

    .venv/bin/python bench/scale_memory.py                                # 0, 100, 200 jobs x 4
    .venv/bin/python bench/scale_memory.py --step 50 --steps 2 --out /tmp/mem
    .venv/bin/python bench/scale_memory.py --frames 0 --baseline 9d6a425 --reps 3   # RSS before/after

Writes bench/results/scale_memory.json (``--out DIR``: elsewhere).
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FRAMES = 8   # tracemalloc frames kept per allocation by default (more: slower operator, finer attribution)


# ---------------------------------------------------------------------------- inside the operator
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def write_probe(out_dir: Path) -> None:
    """SIGUSR1 in the probed operator: one snapshot into ``out_dir/probe-<n>.*`` (the .json last)."""
    n = len(list(out_dir.glob("probe-*.json")))
    gc.collect()
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(out_dir / f"probe-{n}.snap"))
    traced, peak = tracemalloc.get_traced_memory()
    facts = {"rss": _status("VmRSS"), "hwm": _status("VmHWM"), "traced": traced, "traced_peak": peak,
             "types": dict(types.most_common(200))}
    tmp = out_dir / f"probe-{n}.tmp"
    tmp.write_text(json.dumps(facts))
    tmp.replace(out_dir / f"probe-{n}.json")


def watch_peak(out_dir: Path, every_s: float = 1.0, margin: float = 1.05) -> None:
    """Snapshot the traced heap whenever it is ``margin`` above the last such snapshot (peak.snap):
    the operator's peak RSS comes from transient memory during a ramp, which the probes after it
    no longer hold."""
    best = 0
    while True:
        time.sleep(every_s)
        traced = tracemalloc.get_traced_memory()[0]
        if traced > best * margin:
            tracemalloc.take_snapshot().dump(str(out_dir / "peak.tmp"))
            (out_dir / "peak.tmp").replace(out_dir / "peak.snap")
            best = traced
            (out_dir / "peak.txt").write_text(str(traced))


def as_operator(out_dir: Path, frames: int) -> int:
    """The operator, probed (``frames`` 0: without tracemalloc, for RSS figures it does not inflate)."""
    signal.signal(signal.SIGUSR1, lambda *_: write_probe(out_dir))
    if frames:
        tracemalloc.start(frames)
        threading.Thread(target=watch_peak, args=(out_dir,), name="peak-probe", daemon=True).start()
    from stoker.operator.main import run

    return run()


# ---------------------------------------------------------------------------- the driver
def probe(op, out_dir: Path, timeout: float = 120) -> dict:
    from bench.scale_systems import wait_until

    n = len(list(out_dir.glob("probe-*.json")))
    os.kill(op.pid, signal.SIGUSR1)
    wait_until("the operator's snapshot", lambda: (out_dir / f"probe-{n}.json").exists(), timeout, 0.2)
    facts = json.loads((out_dir / f"probe-{n}.json").read_text())
    facts["snap"] = str(out_dir / f"probe-{n}.snap")
    return facts


def top_growth(first: str, last: str, jobs: int, key: str, limit: int = 25) -> list[dict]:
    """Allocation sites (``key``: lineno or traceback) by growth between two snapshots, per job."""
    diff = tracemalloc.Snapshot.load(last).compare_to(tracemalloc.Snapshot.load(first), key)
    out = []
    for stat in diff[:limit]:
        frames = [f"{f.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{f.lineno}"
                  for f in stat.traceback]
        out.append({"kib_per_job": round(stat.size_diff / 1024 / jobs, 2), "count_per_job":
                    round(stat.count_diff / jobs, 2), "where": frames if key == "traceback" else frames[0]})
    return out


def type_growth(first: dict, last: dict, jobs: int, limit: int = 25) -> list[tuple[str, float]]:
    grown = {t: last["types"].get(t, 0) - first["types"].get(t, 0) for t in set(last["types"]) | set(first["types"])}
    return [(t, round(d / jobs, 2)) for t, d in sorted(grown.items(), key=lambda kv: -kv[1])[:limit]]


def baseline_tree(ref: str, into: Path) -> Path:
    """The operator package as it was at ``ref`` (git archive), for PYTHONPATH: it shadows the working
    tree's stoker.operator (stoker is a namespace package), the rest stays the working tree's."""
    import subprocess

    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "operator/stoker/operator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "stoker").mkdir(exist_ok=True)
    (into / "operator" / "stoker" / "operator").rename(into / "stoker" / "operator")
    return into


def probe_run(c, args: argparse.Namespace, workdir: Path, snaps: Path, env: dict[str, str]) -> list[dict]:
    """One operator in a fresh namespace, jobs added step by step; its points (then its pods are deleted)."""
    from bench import scale_observe as O
    from bench import scale_systems as S
    from bench.bench_operator_scale import clean_up, create_ns

    snaps.mkdir(parents=True, exist_ok=True)
    ns = f"scale-memory-{os.urandom(2).hex()}"
    create_ns(c, ns)
    argv = [sys.executable, str(Path(__file__).resolve()), "--as-operator", str(snaps), str(args.frames)]
    op = S.StokerOperator(c, workdir, env, argv=argv).up(ns)
    watch = O.PodWatch(c, ns, S.JOB_LABEL).start()
    points = []
    try:
        time.sleep(args.settle)
        points.append({"jobs": 0, **probe(op, snaps)})
        for k in range(1, args.steps + 1):
            S.create_jobs(c, "stoker", ns, args.step, args.workers, first=(k - 1) * args.step)
            S.wait_until("all pods Running", lambda: watch.count() >= k * args.step * args.workers,
                         args.timeout, 0.5)
            time.sleep(args.settle)
            points.append({"jobs": k * args.step, **probe(op, snaps)})
            print(f"[memory] {env.get('PYTHONPATH') or 'working tree'}: {points[-1]['jobs']} jobs: rss "
                  f"{points[-1]['rss'] / 2**20:.1f} MiB, peak {points[-1]['hwm'] / 2**20:.1f}, traced "
                  f"{points[-1]['traced'] / 2**20:.1f} (load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        watch.stop()
        op.down()
        clean_up(c, "stoker", ns, args.timeout)
    return points


def run(args: argparse.Namespace) -> dict:
    from bench import scale_systems as S
    from bench.bench_operator_scale import CRD, NODE_GRACE
    from stoker.devcluster.local import LocalCluster

    tmp = tempfile.TemporaryDirectory(prefix="bench-memory-")
    workdir = Path(tmp.name)
    out = Path(args.out or "/tmp") / "scale-memory-snapshots"
    env = dict(kv.split("=", 1) for kv in args.stoker_env)
    variants = {"working tree": env}
    if args.baseline:
        old = baseline_tree(args.baseline, workdir / "baseline")
        variants = {f"baseline {args.baseline}": {**env, "PYTHONPATH": str(old)}, **variants}
    nodes = math.ceil(args.step * args.steps * args.workers / 8) + 10
    c = LocalCluster(workdir / "cluster", die_with_parent=True, node_monitor_grace_period=NODE_GRACE)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        c.up()
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        c.wait_crd_established("trainingjobs.stoker.dev")
        c.add_kwok_nodes(nodes, gpus=8, prefix="bench-kwok", labels=S.POOL)
        for rep in range(args.reps):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for v in order:
                snaps = out / f"{len(runs[v])}-{'baseline' if v.startswith('baseline') else 'tree'}"
                for stale in snaps.glob("*"):
                    stale.unlink()
                points = probe_run(c, args, workdir, snaps, variants[v])
                runs[v].append({"load_1m": round(os.getloadavg()[0], 2), **summarize(points, args)})
    finally:
        c.down()
        tmp.cleanup()
    return {"step_jobs": args.step, "steps": args.steps, "workers_per_job": args.workers, "settle_s": args.settle,
            "frames": args.frames, "stoker_env": args.stoker_env, "reps": args.reps, "baseline": args.baseline,
            "slopes": {v: slopes(rs) for v, rs in runs.items()}, "runs": runs}


def slopes(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Median [min, max] over the repetitions of the KiB per job, idle -> last step and first -> last."""
    import statistics

    out = {}
    for key in ("kib_per_job_from_idle", "kib_per_job"):
        for f in ("rss", "hwm"):
            xs = [r[key][f] for r in runs]
            out[f"{key}.{f}"] = {"median": round(statistics.median(xs), 1), "min": min(xs), "max": max(xs)}
    return out


def summarize(points: list[dict], args: argparse.Namespace) -> dict:
    first, last = points[1] if len(points) > 2 else points[0], points[-1]
    jobs = last["jobs"] - first["jobs"]
    mib = 2**20
    slope = {f: round((last[f] - first[f]) / jobs / 1024, 1) for f in ("rss", "hwm", "traced")}
    idle = {f: round((last[f] - points[0][f]) / last["jobs"] / 1024, 1) for f in ("rss", "hwm", "traced")}
    out = {"points": [{"jobs": p["jobs"], "rss_mib": round(p["rss"] / mib, 1), "peak_rss_mib": round(p["hwm"] / mib, 1),
                        "traced_mib": round(p["traced"] / mib, 1),
                        "traced_peak_mib": round(p["traced_peak"] / mib, 1)} for p in points],
           "kib_per_job": slope, "kib_per_job_from_idle": idle, "types_per_job": type_growth(first, last, jobs)}
    if not args.frames:
        return out
    return {**out, "sites": top_growth(first["snap"], last["snap"], jobs, "lineno"),
            "peak_traced_mib": round(int(Path(last["snap"]).with_name("peak.txt").read_text()) / mib, 1),
            "peak_sites": top_growth(points[0]["snap"], str(Path(last["snap"]).with_name("peak.snap")),
                                     last["jobs"], "lineno"),
            "tracebacks": top_growth(first["snap"], last["snap"], jobs, "traceback", 12)}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--as-operator":
        return as_operator(Path(sys.argv[2]), int(sys.argv[3]))
    from bench.common import write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=100, help="jobs added per step")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after all Running before a snapshot")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--frames", type=int, default=FRAMES, help="tracemalloc frames; 0: no tracemalloc (RSS only)")
    ap.add_argument("--stoker-env", action="append", default=[], metavar="K=V", help="extra operator environment")
    ap.add_argument("--out", default=None, help="write the results file here instead of bench/results")
    ap.add_argument("--reps", type=int, default=1, help="runs per variant (interleaved with --baseline)")
    ap.add_argument("--baseline", default=None, metavar="REF", help="also the operator code of this commit, "
                    "side by side with the working tree (--frames 0 is the fair comparison)")
    args = ap.parse_args()
    results = run(args)
    for variant, runs in results["runs"].items():
        print(f"== {variant}")
        for r in runs:
            print(f"  load {r['load_1m']}: " + ", ".join(
                f"{p['jobs']} jobs {p['rss_mib']} MiB (peak {p['peak_rss_mib']})" for p in r["points"]) +
                  f"; KiB/job from idle {r['kib_per_job_from_idle']}, between steps {r['kib_per_job']}")
        print("  median [min, max]:", json.dumps(results["slopes"][variant]))
    if args.frames:
        report_sites(results["runs"]["working tree"][-1])
    write_results("scale_memory", results, Path(args.out) if args.out else None)
    return 0


def report_sites(r: dict) -> None:
    print("objects per job:", r["types_per_job"][:15])
    for row in r["sites"][:15]:
        print(f"{row['kib_per_job']:8.1f} KiB/job {row['count_per_job']:8.1f} blocks/job  {row['where']}")
    print(f"at the traced peak ({r['peak_traced_mib']} MiB), per job over the idle operator:")
    for row in r["peak_sites"][:15]:
        print(f"{row['kib_per_job']:8.1f} KiB/job {row['count_per_job']:8.1f} blocks/job  {row['where']}")

if __name__ == "__main__":
    sys.exit(main())
