"""False alarms: a healthy job that is merely slow at times must never be restarted.

A 2-worker job of the built-in trainer (the recovery benchmark's job, tiny model, checkpoint
every 5 steps to MinIO) on process nodes, run by the operator with the **default** failure
policy and heartbeat settings a user gets, with everything that looks like trouble and is not:

  * a long first step (the batch of step 1 waits 15 s),
  * data-loader pauses (8 s before step 30, 20 s before step 60; the trainer's
    ``debug.data_pauses``: it sleeps, its heartbeats go on),
  * a checkpoint stall (step 40's commit held 10 s, ``debug.slow_checkpoint_at_step``: the
    next save waits for it with the step held still).

Counted per run: incidents that acted on the job (Restart/Replace/JobFailed; none is the
goal), the job's end phase, and the wall time. ``--runs`` repetitions (default 3).

    .venv/bin/python bench/bench_false_alarms.py [--runs 3] [--cluster-dir DIR]

Writes bench/results/bench_false_alarms.json and prints a table.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_recovery import Bench, trainer_cfg, wait  # noqa: E402
from bench.common import machine_info, print_table, write_results  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402

STEPS = 120
PAUSES = "1:15,30:8,60:20"
STALL = {"slow_checkpoint_at_step": 40, "slow_checkpoint_seconds": 10}


def one(b: Bench, i: int) -> dict:
    name = f"calm-{i}-{uuid.uuid4().hex[:4]}"
    cfg = trainer_cfg(b.tmp / name, STEPS, None)
    cfg["debug"] = {"data_pauses": PAUSES, **STALL}
    t0 = time.time()
    b.create(name, cfg, {})   # the default failure policy
    st = wait("job finished", lambda: (s := b.status(name)).get("phase") in ("Succeeded", "Failed") and s, 900, 0.5)
    acted = [x for x in st.get("incidents") or [] if x.get("kind") in ("Restart", "Replace", "JobFailed")]
    return {"job": name, "phase": st.get("phase"), "false_alarms": len(acted), "incidents": acted,
            "wall_s": time.time() - t0, "restarts": st.get("restarts")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cluster-dir", default=None, help="reuse a running local cluster (stoker cluster up --dir)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-false-alarms-"))
    cluster = LocalCluster(args.cluster_dir or tmp / "cluster", die_with_parent=not args.cluster_dir)
    cluster.up()
    b = Bench(cluster, tmp)
    results: dict = {"machine": machine_info(), "runs": args.runs, "command": [sys.executable, *sys.argv],
                     "failure_policy": "default (unset)", "workload": {"steps": STEPS, "data_pauses": PAUSES, **STALL},
                     "samples": []}
    try:
        b.setup(nodes=2)
        for i in range(args.runs):
            r = one(b, i)
            print(r, flush=True)
            results["samples"].append(r)
            write_results("bench_false_alarms", results)
    finally:
        b.teardown()
        if not args.cluster_dir:
            cluster.down()
    s = results["samples"]
    results["table"] = [{"runs": len(s), "succeeded": sum(1 for r in s if r["phase"] == "Succeeded"),
                         "false alarms (total)": sum(r["false_alarms"] for r in s),
                         "wall median s": sorted(r["wall_s"] for r in s)[len(s) // 2]}]
    write_results("bench_false_alarms", results)
    print_table("false alarms (default failure policy)", results["table"])
    return 0 if all(r["false_alarms"] == 0 and r["phase"] == "Succeeded" for r in s) else 1


if __name__ == "__main__":
    sys.exit(main())
