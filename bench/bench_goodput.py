"""Goodput of a Stoker job with failures at random moments, repeated.

The job is the demo model (``examples/train-tiny.yaml``: the tiny GPT, DDP over 2
workers, gloo on CPU) run as a TrainingJob by the operator on process nodes of a
local control plane, checkpointing every ``--ckpt-every`` steps (async) to MinIO,
with the failure policy a user gets by default (nothing tuned).

Settings, each run ``--repeat`` times (>= 3), interleaved (undisturbed, every F1,
every F2, then again) so that the machine's load drifts over all of them alike:

  undisturbed       the job with no failure (the baseline: same job, same machine)
  plain torchrun    the same trainer and config under ``torchrun --standalone`` on the host
                    (``--torchrun``): no operator, no pods, no SDK heartbeats, no faults, the
                    same checkpoints to the same MinIO. Its goodput is the workload's own
                    ceiling here: what startup, checkpoint staging and the loop cost with
                    nothing of Stoker around them (wall: torchrun started -> exited)
  kill every F s    a random worker's trainer SIGKILLed at random moments, on average
                    every F seconds: each gap is drawn from [F/2, 3F/2] (seeded:
                    ``--seed N`` replays the choices), so a fault lands anywhere in a
                    step, an all-reduce or an async save

Per run:

  wall        TrainingJob applied -> phase Succeeded
  productive  sum of the trainer's own step times (forward, backward, optimizer,
              all-reduce) over the steps of the final model. The trainer trims its
              metrics file back to the checkpoint it resumes from, so the file holds
              exactly the final model's lineage: steps computed twice count once,
              startup, checkpoint stalls, detection and restarts count zero.
  goodput     productive / wall (the issue's definition)
  per failure (not training - the undisturbed runs' median not training) / kills
  start, between, end   where the time that is not training went (the step journal,
              STOKER_STEP_JOURNAL_DIR): applied -> the first step; first step -> last
              step, less productive (checkpoint stalls, the loop's own work; with faults,
              their detection, restarts and recomputed steps); last step -> Succeeded seen

Per setting: goodput median [min, max] over the repetitions, and the same for the
cost of one failure; and, derived from those (labelled as derived, not measured):
the shortest failure interval at which goodput stays >= 95% on this machine. Goals:
95% (the recovery issue), 99% with a failure every 300 s (issue 12).

    .venv/bin/python bench/bench_goodput.py [--steps 30000] [--kill-every 120,300] [--repeat 3] [--seed N]

Writes bench/results/bench_goodput.json (raw runs, seed, commit, machine, load,
command line) after every run, and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_recovery import Bench, trainer_pid, wait  # noqa: E402
from bench.recovery_baseline import torchrun_command  # noqa: E402
from bench.common import code_version, print_table, spread, write_results  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402
from stoker.worker import journal  # noqa: E402

DEMO_CONFIG = ROOT / "examples" / "train-tiny.yaml"
GOAL = 0.95
GOAL_ISSUE_12 = 0.99  # with a failure every 300 s
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


def run_job(b: Bench, label: str, steps: int, ckpt_every: int, kill_every: float | None,
            rng: random.Random) -> dict:
    name = f"gp-{label}-{uuid.uuid4().hex[:4]}"
    cfg = demo_cfg(b.tmp / name, steps, ckpt_every)
    tokens_per_step = cfg["train"]["global_batch"] * cfg["data"]["seq_len"]
    jdir = b.tmp / name / "journal"
    t0 = time.time()
    out = b.create(name, cfg, {}, ckpt_every=ckpt_every,  # the default failure policy
                   extra_env={"STOKER_STEP_JOURNAL_DIR": str(jdir)})
    kills: list[dict] = []
    gap = (lambda: rng.uniform(0.5 * kill_every, 1.5 * kill_every)) if kill_every else None
    next_kill = t0 + gap() if gap else None
    last_report = t0
    while True:
        st = b.status(name)
        phase = st.get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        now = time.time()
        if next_kill is not None and now >= next_kill:
            inc, worker = st.get("incarnation", 0), rng.randrange(2)
            pid = trainer_pid(pod_name=f"{name}-worker-{worker}-{inc}")
            if pid:  # none while a restart is under way: try again in a moment
                os.kill(pid, signal.SIGKILL)
                step = (st.get("metrics") or {}).get("step")
                kills.append({"t_s": round(now - t0, 2), "worker": worker, "incarnation": inc, "step": step})
                next_kill = now + gap()  # type: ignore[misc]
                print(f"[{label}] t={now - t0:6.1f}s SIGKILL worker {worker} (incarnation {inc}, step {step})",
                      flush=True)
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
    return {"run": setting(kill_every), "kill_every_s": kill_every, "kills": len(kills), "kill_log": kills,
            "incidents": len(incidents), "causes": sorted({i.get("detectedCause") for i in incidents}),
            "wall_s": wall, "productive_s": productive, "goodput": productive / wall,
            "checksum": summary["checksum"], "restarts": st.get("restarts"),
            **where_time_went(jdir, t0, wall, productive)}


def run_torchrun(b: Bench, label: str, steps: int, ckpt_every: int) -> dict:
    """The same job under plain torchrun on the host, undisturbed (see the module's docstring)."""
    name = f"gp-{label}-{uuid.uuid4().hex[:4]}"
    out = b.tmp / name
    out.mkdir(parents=True)
    cfg = demo_cfg(out, steps, ckpt_every)
    cfg["checkpoint"]["uri"] = f"s3://{b.bucket}/{name}"   # keep: the example's 3, the CRD's default too
    (out / "config.json").write_text(json.dumps(cfg))
    jdir = out / "journal"
    argv, env = torchrun_command(out / "config.json", env={**b.c.s3_env(), "STOKER_STEP_JOURNAL_DIR": str(jdir)})
    t0 = time.time()
    with open(out / "torchrun.log", "wb") as log:
        rc = subprocess.run(argv, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=log).returncode
    wall = time.time() - t0
    if rc:
        raise RuntimeError(f"{name}: torchrun exited {rc}; see {out / 'torchrun.log'}")
    productive, n = productive_seconds(out / "metrics.jsonl", cfg["train"]["global_batch"] * cfg["data"]["seq_len"])
    if n != steps:
        raise RuntimeError(f"{name}: metrics hold {n} steps, expected {steps}")
    summary = json.loads((out / "summary.json").read_text())
    return {"run": TORCHRUN, "kill_every_s": None, "kills": 0, "kill_log": [], "incidents": 0, "causes": [],
            "wall_s": wall, "productive_s": productive, "goodput": productive / wall,
            "checksum": summary["checksum"], "restarts": 0, **where_time_went(jdir, t0, wall, productive)}


def where_time_went(jdir: Path, t0: float, wall: float, productive: float) -> dict:
    """From the step journal: ``start_s`` (applied -> the first step done by any rank), ``end_s``
    (the last step -> Succeeded seen) and ``between_s``: the time from the first step to the last
    that was not a step of the final model (checkpoint stalls, the loop's own work, and for runs
    with faults their detection, restarts and recomputed steps)."""
    steps = [r["t"] for r in journal.read(jdir) if r.get("event") == "step"]
    first, last = min(steps) - t0, max(steps) - t0
    return {"start_s": first, "end_s": wall - last, "between_s": (last - first) - productive}


TORCHRUN = "plain torchrun (no faults)"


def setting(kill_every: float | None) -> str:
    return "undisturbed" if kill_every is None else f"kill every {kill_every:g}s (random gaps)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--kill-every", default="120,300", help="comma-separated mean failure intervals in seconds")
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting (interleaved)")
    ap.add_argument("--seed", type=int, default=None, help="the fault moments' seed (printed; replays a run)")
    ap.add_argument("--torchrun", action="store_true", help="also run the job under plain torchrun (no faults)")
    ap.add_argument("--cluster-dir", default=None, help="reuse a running local cluster (stoker cluster up --dir)")
    ap.add_argument("--report", metavar="JSON", help="print the table of earlier results and exit")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON there instead of bench/results/")
    args = ap.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    intervals = [float(x) for x in args.kill_every.split(",") if x]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"fault seed {seed} (replay: --seed {seed})", flush=True)
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-goodput-"))
    cluster = LocalCluster(args.cluster_dir or tmp / "cluster", die_with_parent=not args.cluster_dir)
    cluster.up()
    b = Bench(cluster, tmp)
    results: dict = {"steps": args.steps, "ckpt_every": args.ckpt_every, "repeat": args.repeat, "seed": seed,
                     "failure_policy": "defaults", "model": str(DEMO_CONFIG.relative_to(ROOT)), "workers": 2,
                     "code_at_start": code_version(), "runs": []}  # "machine" is as of each write
    try:
        b.setup(nodes=3)
        def record(rep: int, r: dict) -> None:
            print(json.dumps(r), flush=True)
            results["runs"].append({"repetition": rep, "loadavg_end": os.getloadavg(), **r})
            write_results("bench_goodput", results, args.out)  # partial results survive an interrupted run

        for rep in range(args.repeat):
            for kill_every in [None, *intervals]:
                label = ("base" if kill_every is None else f"k{kill_every:g}") + f"-{rep}"
                record(rep, run_job(b, label, args.steps, args.ckpt_every, kill_every, rng))
            if args.torchrun:
                record(rep, run_torchrun(b, f"torchrun-{rep}", args.steps, args.ckpt_every))
    finally:
        b.teardown()
        if not args.cluster_dir:
            cluster.down()

    report(results)
    write_results("bench_goodput", results, args.out)
    return 0


def report(results: dict) -> None:
    """Add the per-setting table and the derived figure to ``results`` and print them.

    A failure's cost is the time it adds that is not training: the run's (wall -
    productive) less the undisturbed runs' median of it, per kill. (Wall times alone
    would also carry the runs' different step speeds on a shared machine.)"""
    runs = results["runs"]
    base = [r for r in runs if r["kill_every_s"] is None and r["run"] != TORCHRUN]
    base_idle = statistics.median(r["wall_s"] - r["productive_s"] for r in base)
    base_goodput = statistics.median(r["goodput"] for r in base)
    checksum = base[0]["checksum"]
    rows = []
    for name in dict.fromkeys(r["run"] for r in runs):
        rs = [r for r in runs if r["run"] == name]
        for r in rs:
            if r["kills"]:
                r["cost_per_failure_s"] = ((r["wall_s"] - r["productive_s"]) - base_idle) / r["kills"]
        row = {"setting": name, "runs": len(rs), "kills": "/".join(str(r["kills"]) for r in rs),
               "wall s": spread([r["wall_s"] for r in rs], digits=0),
               "goodput %": spread([r["goodput"] for r in rs], 100.0),
               "vs undisturbed %": spread([r["goodput"] / base_goodput for r in rs], 100.0),
               "s per failure": spread([r["cost_per_failure_s"] for r in rs if "cost_per_failure_s" in r]),
               "same checksum": all(r["checksum"] == checksum for r in rs)}
        for key in ("start_s", "between_s", "end_s"):  # runs written before the journal have none
            row[key.replace("_s", " s")] = spread([r[key] for r in rs if key in r])
        if rs[0]["kill_every_s"]:
            median = statistics.median(r["goodput"] for r in rs)
            row["goal 95%"] = "met" if median >= GOAL else "missed"
            if rs[0]["kill_every_s"] == 300:
                row["goal 99% (issue 12)"] = "met" if median >= GOAL_ISSUE_12 else "missed"
        rows.append(row)
    results["table"] = rows
    costs = [r["cost_per_failure_s"] for r in runs if "cost_per_failure_s" in r]
    # goodput = 1 / (1 + o + c / F): o = the undisturbed job's idle share per productive second,
    # c = cost per failure, F = productive seconds between failures
    o = base_idle / statistics.median(r["productive_s"] for r in base)
    headroom = 1 / GOAL - 1 - o
    results.pop("derived_min_interval_for_95pct_s", None)
    if costs and headroom > 0:
        results["derived_min_interval_for_95pct_s"] = statistics.median(costs) / headroom
    print_table(f"Goodput, demo model, {results['steps']} steps, 2 workers, checkpoint every "
                f"{results['ckpt_every']} steps, default failure policy, median [min, max] of "
                f"{results.get('repeat', 1)} runs (seed {results.get('seed')})", rows,
                columns=list(dict.fromkeys(k for row in rows for k in row)))
    if "derived_min_interval_for_95pct_s" in results:
        print(f"derived (not measured): goodput stays >= 95% with a failure at most every "
              f"{results['derived_min_interval_for_95pct_s']:.0f} s of training on this machine")


if __name__ == "__main__":
    sys.exit(main())
