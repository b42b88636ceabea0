"""Goodput of a Stoker job with a failure injected every few minutes.

The job is the demo model (``examples/train-tiny.yaml``: the tiny GPT, DDP over 2
workers, gloo on CPU) run as a TrainingJob by the operator on process nodes of a
local control plane, checkpointing every ``--ckpt-every`` steps (async) to MinIO.

Runs, one after the other in the same process and cluster:

  undisturbed       the job with no failure (the baseline: same job, same machine)
  kill every F s    the same job with one worker's trainer SIGKILLed every F seconds
                    (one run per ``--kill-every`` value)

Per run:

  wall        TrainingJob applied -> phase Succeeded
  productive  sum of the trainer's own step times (forward, backward, optimizer,
              all-reduce) over the steps of the final model. The trainer trims its
              metrics file back to the checkpoint it resumes from, so the file holds
              exactly the final model's lineage: steps computed twice count once,
              startup, checkpoint stalls, detection and restarts count zero.
  goodput     productive / wall (the issue's definition)
  vs baseline goodput / goodput of the undisturbed run
  per failure (wall - undisturbed wall) / kills: what one failure costs, detection,
              restart and recomputation together

and, derived from those (labelled as derived, not measured): the shortest failure
interval at which goodput stays >= 95% on this machine,
``F = cost / (1 - 0.95 / undisturbed goodput)``.

    .venv/bin/python bench/bench_goodput.py [--steps 12000] [--kill-every 150,300] [--ckpt-every 100]

Writes bench/results/bench_goodput.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_recovery import Bench, trainer_pid, wait  # noqa: E402
from bench.common import machine_info, print_table, write_results  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402

DEMO_CONFIG = ROOT / "examples" / "train-tiny.yaml"
GOAL = 0.95
POLL_S = 0.5   # how often the job is looked at: wall time is known to within this


def demo_cfg(out: Path, steps: int, ckpt_every: int) -> dict:
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg["train"]["steps"] = steps
    cfg["parallel"] = {"mode": "ddp"}
    cfg["train"]["num_threads"] = 1
    cfg["validation"]["every"] = 1000
    cfg["checkpoint"]["interval"] = ckpt_every
    cfg["output"] = {"metrics_path": str(out / "metrics.jsonl"), "summary_path": str(out / "summary.json")}
    return cfg


def productive_seconds(metrics: Path, tokens_per_step: int) -> tuple[float, int]:
    """(sum of step times, number of steps) of the final model's lineage."""
    by_step: dict[int, float] = {}
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        tps = rec.get("tokens_per_s")
        if "step" in rec and tps:
            by_step[int(rec["step"])] = tokens_per_step / float(tps)  # the last record of a step wins
    return sum(by_step.values()), len(by_step)


def run_job(b: Bench, label: str, steps: int, ckpt_every: int, kill_every: float | None) -> dict:
    name = f"gp-{label}-{uuid.uuid4().hex[:4]}"
    cfg = demo_cfg(b.tmp / name, steps, ckpt_every)
    tokens_per_step = cfg["train"]["global_batch"] * cfg["data"]["seq_len"]
    t0 = time.time()
    out = b.create(name, cfg, {"progressTimeoutSeconds": 60, "heartbeatTimeoutSeconds": 60, "maxRestarts": 3},
                   ckpt_every=ckpt_every)
    kills: list[float] = []
    next_kill = t0 + kill_every if kill_every else None
    last_report = t0
    while True:
        st = b.status(name)
        phase = st.get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        now = time.time()
        if next_kill is not None and now >= next_kill:
            inc = st.get("incarnation", 0)
            pid = trainer_pid(pod_name=f"{name}-worker-1-{inc}")
            if pid:  # none while a restart is under way: try again in a moment
                os.kill(pid, signal.SIGKILL)
                kills.append(now - t0)
                next_kill = now + kill_every
                print(f"[{label}] t={now - t0:6.1f}s SIGKILL worker 1 (incarnation {inc}, step "
                      f"{(st.get('metrics') or {}).get('step')})", flush=True)
        if now - last_report >= 30:
            last_report = now
            print(f"[{label}] t={now - t0:6.1f}s phase={phase} step={(st.get('metrics') or {}).get('step')} "
                  f"incidents={len(st.get('incidents') or [])}", flush=True)
        time.sleep(POLL_S)
    wall = time.time() - t0
    if phase != "Succeeded":
        raise RuntimeError(f"{name} ended {phase}: {st.get('conditions')}")
    productive, n = productive_seconds(out / "metrics.jsonl", tokens_per_step)
    if n != steps:
        raise RuntimeError(f"{name}: metrics hold {n} steps, expected {steps}")
    incidents = [i for i in st.get("incidents") or [] if i.get("kind") in ("Restart", "Replace")]
    summary = json.loads((out / "summary.json").read_text())
    return {"run": "undisturbed" if kill_every is None else f"kill every {kill_every:g}s",
            "kill_every_s": kill_every, "kills": len(kills), "kill_times_s": [round(k, 1) for k in kills],
            "incidents": len(incidents), "causes": sorted({i.get("detectedCause") for i in incidents}),
            "wall_s": wall, "productive_s": productive, "goodput": productive / wall,
            "checksum": summary["checksum"], "restarts": st.get("restarts")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--kill-every", default="150,300", help="comma-separated failure intervals in seconds")
    ap.add_argument("--cluster-dir", default=None, help="reuse a running local cluster (stoker cluster up --dir)")
    ap.add_argument("--report", metavar="JSON", help="print the table of earlier results and exit")
    args = ap.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    intervals = [float(x) for x in args.kill_every.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="bench-goodput-"))
    cluster = LocalCluster(args.cluster_dir or tmp / "cluster", die_with_parent=not args.cluster_dir)
    cluster.up()
    b = Bench(cluster, tmp)
    results: dict = {"machine": machine_info(), "steps": args.steps, "ckpt_every": args.ckpt_every,
                     "model": str(DEMO_CONFIG.relative_to(ROOT)), "workers": 2, "runs": []}
    try:
        b.setup(nodes=3)
        for kill_every in [None, *intervals]:
            r = run_job(b, "base" if kill_every is None else f"k{kill_every:g}", args.steps, args.ckpt_every,
                        kill_every)
            print(json.dumps(r), flush=True)
            results["runs"].append(r)
            write_results("bench_goodput", results)  # partial results survive an interrupted run
    finally:
        b.teardown()
        if not args.cluster_dir:
            cluster.down()

    report(results)
    path = write_results("bench_goodput", results)
    print(f"wrote {path}")
    return 0


def report(results: dict) -> None:
    """Add the table and the derived figures to ``results`` and print them.

    A failure's cost is the time it adds that is not training: (wall - productive) of
    the disturbed run less that of the undisturbed one, per kill. (Wall times alone
    would also carry the runs' different step speeds on a shared machine.)"""
    base = results["runs"][0]
    base_idle = base["wall_s"] - base["productive_s"]
    rows = []
    for r in results["runs"]:
        row = {"run": r["run"], "kills": r["kills"], "wall s": r["wall_s"], "productive s": r["productive_s"],
               "not training s": r["wall_s"] - r["productive_s"], "goodput": r["goodput"],
               "vs undisturbed": r["goodput"] / base["goodput"], "same checksum": r["checksum"] == base["checksum"]}
        if r["kills"]:
            cost = ((r["wall_s"] - r["productive_s"]) - base_idle) / r["kills"]
            r["cost_per_failure_s"] = cost
            row["s per failure"] = cost
            row["goal 95%"] = "met" if r["goodput"] >= GOAL else "missed"
        rows.append(row)
    results["table"] = rows
    costs = [r["cost_per_failure_s"] for r in results["runs"] if r.get("cost_per_failure_s")]
    # goodput = 1 / (1 + o + c / F): o = the undisturbed job's idle share per productive second,
    # c = cost per failure, F = productive seconds between failures
    o = base_idle / base["productive_s"]
    headroom = 1 / GOAL - 1 - o
    results.pop("derived_min_interval_for_95pct_s", None)
    if costs and headroom > 0:
        results["derived_min_interval_for_95pct_s"] = (sum(costs) / len(costs)) / headroom
    print_table(f"Goodput, demo model, {results['steps']} steps, 2 workers, checkpoint every "
                f"{results['ckpt_every']} steps (load {results['machine'].get('loadavg_1m') or 0:.1f} at start)", rows,
                columns=list(dict.fromkeys(k for row in rows for k in row)))
    if "derived_min_interval_for_95pct_s" in results:
        print(f"derived (not measured): goodput stays >= 95% with a failure at most every "
              f"{results['derived_min_interval_for_95pct_s']:.0f} s of training on this machine")


if __name__ == "__main__":
    sys.exit(main())
