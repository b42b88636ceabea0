"""A crashed trainer on real nodes (issue 12): how fast Stoker trains again in containers.

The test bed of bench/chaos_real.py: 2 real nodes (kubelet + containerd + kube-proxy, each in its
own network namespace), the Helm-installed operator and its rendezvous store on real-node-0, the
trainers' image imported into the nodes, MinIO. A 2-worker job of the built-in trainer (the recovery
tests' tiny model, S3 checkpoint every 5 steps, one worker per node while both are up, non-root) has
the trainer of worker 1 SIGKILLed inside its container at a random moment of real training (seeded,
``--seed`` replays; 10-60 steps, then a random fraction of a step). Settings, side by side in each
repetition:

  crash              the failure policy's defaults: restarted in place (same pods, incarnation 0),
                     every rank from the newest S3 checkpoint
  crash-memory       the same with the in-memory tier (``memoryIntervalSteps: 1``): from the step every
                     rank holds in its pod's memory
  crash-incarnation  ``inPlaceRestarts: 0``: new pods, a new incarnation (the path before issue 12)
  crash-warm, crash-memory-warm  crash and crash-memory, the kill 10-60 steps after both pods' warm
                     processes said they are ready (stoker.operator.launch_warm: a warm process starts
                     importing after its pod's first step, 10-15 s here). The early kills above mostly
                     find it still importing, a crash hours into a job finds it ready: both are shown.

and, after each repetition, plain ``torchrun --max-restarts=3`` of the same trainer on the host (no
containers, no Stoker: bench/recovery_baseline.py). Measured from the kill: ``detect`` (the incident
in status), ``recover`` (the first step of a restarted trainer, from the step journal on a host
folder mounted into the pods: the witness, not something the system uses), ``lost`` (steps computed
before the kill past where the restart resumed). Each job must end Succeeded.

    .venv/bin/python bench/bench_recovery_real.py [--runs 5] [--kinds crash,crash-memory,crash-incarnation]
        [--seed N] [--out DIR]      (root, Linux: the real-node packages, see `make test-realnodes`)

Writes bench/results/bench_recovery_real.json (or DIR/...) after every run and prints a table; each run's
step journal and its first pods' logs (timestamped) stay in the scratch folder it prints.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_recovery import restarted_steps, work_lost  # noqa: E402
from bench.chaos_real import setup, shared_dir, trainer_job  # noqa: E402
from bench.common import code_version, print_table, spread, write_results  # noqa: E402
from bench.recovery_baseline import torchrun_crash, trainer_cfg, wait  # noqa: E402
from tests.realnodes_tests import operator_helm as H  # noqa: E402
from tests.recovery_tests import faults as F  # noqa: E402

KINDS = ("crash", "crash-memory", "crash-incarnation", "crash-warm", "crash-memory-warm")
STEPS = 300   # ~0.02 s a step on these nodes (more under load): the kill comes at step 10-60, the rest follows it
WARM_STEPS = 1000   # the -warm kinds: both pods' warm processes import torch first (10-15 s of training)
READY = "stoker warm: ready for the next restart"   # what a warm process says (stoker.operator.launch_warm)


def warm_ready(b, pods: list[str]) -> float:
    """Once every pod's launcher has a warm process that finished importing: the time (wall clock)."""
    said = lambda pod: READY in b.c.kubectl("logs", "-n", b.ns, pod, check=False).stdout  # noqa: E731
    wait("the pods' warm processes ready", lambda: all(said(p) for p in pods), 180, 0.5)
    return time.time()


def one(b, image: str, tmp: Path, kind: str, i: int, rng: random.Random) -> dict:
    name = f"{kind.replace('crash', 'c')}-{i}-{uuid.uuid4().hex[:4]}"
    out = shared_dir(tmp / name)
    jdir = shared_dir(out / "journal")
    warm = kind.endswith("-warm")
    cfg = trainer_cfg(out, WARM_STEPS if warm else STEPS, None)
    H.apply_config_map(b.c, b.ns, f"{name}-config", {"config.json": json.dumps(cfg)})
    policy = {"inPlaceRestarts": 0} if kind == "crash-incarnation" else {}   # else the defaults: in place
    body = trainer_job(b.bucket, image, name, out, jdir, policy,
                       memory_every=1 if kind.startswith("crash-memory") else None)
    b.c.kubectl("apply", "-n", b.ns, "-f", "-", input=json.dumps(body))
    status = lambda: b.status(name)  # noqa: E731
    after = warm_ready(b, [f"{name}-worker-{i}-0" for i in (0, 1)]) if warm else 0.0
    moment = F.at_random_moment(rng, jdir, lambda: int(status().get("incarnation", 0)), min_steps=10,
                                max_steps=60, after_t=after, timeout=300)
    moment["after_warm_ready"] = warm
    pid = wait("the trainer of worker 1", lambda: F.trainer_pid(f"{name}-worker-1-0"), 30)
    t0 = time.time()
    F.signal_pid(pid, signal.SIGKILL)
    inc = wait("incident", lambda: next((i for i in status().get("incidents") or []
                                         if i.get("kind") in ("Restart", "Replace")), None), 300, 0.1)
    t_detect = time.time()
    first = min(wait("a restarted trainer's first step", lambda: restarted_steps(jdir, t0), 300))
    wait("job Succeeded", lambda: status().get("phase") in ("Succeeded", "Failed"), 600, 0.5)
    st = status()
    m = work_lost(jdir, t0)
    for pod in (f"{name}-worker-0-0", f"{name}-worker-1-0"):   # what the run's trainers and launchers said
        (out / f"{pod}.log").write_text(b.c.kubectl("logs", "-n", b.ns, pod, "--timestamps", check=False).stdout)
    return {"kind": kind, "phase": st.get("phase"), "cause": inc.get("detectedCause"), "detect_s": t_detect - t0,
            "recover_s": first - t0, "after_detect_s": first - t_detect,
            "in_place": bool(inc.get("inPlace")) and not st.get("incarnation"), "incarnation": st.get("incarnation"),
            "operator_latency_s": inc.get("detectionLatencySeconds"), "fault_at": moment,
            **{k: m[k] for k in ("resumed_at", "resumed_from", "lost_steps")}}


def timing_row(kind: str, runs: list[dict]) -> tuple[dict, list[dict]]:
    """The columns every real-node recovery benchmark shows for one setting (median [min, max] of the runs
    that ended Succeeded), and those runs."""
    rs = [r for r in runs if r["kind"] == kind and r.get("phase") == "Succeeded"]
    return {"setting": kind, "ok runs": f"{len(rs)}/{sum(r['kind'] == kind for r in runs)}",
            "detect s": spread([r["detect_s"] for r in rs], digits=2),
            "training again s": spread([r["recover_s"] for r in rs], digits=2),
            "after detect s": spread([r["after_detect_s"] for r in rs], digits=2),
            "lost steps": spread([float(r["lost_steps"]) for r in rs], digits=2),
            "from": "/".join(sorted({str(r["resumed_from"]) for r in rs}))}, rs


def table(results: dict) -> list[dict]:
    """Per setting: median [min, max] of the runs that ended Succeeded; plain torchrun's crash beside them."""
    rows = []
    base = [r["recover_s"] for r in results["torchrun"] if r.get("recover_s") is not None]
    for kind in results["kinds"]:
        row, rs = timing_row(kind, results["stoker"])
        rows.append({**row, "in place": f"{sum(r['in_place'] for r in rs)}/{len(rs)}"})
    rows.append({"setting": "plain torchrun --max-restarts=3 (host, no containers)",
                 "ok runs": f"{len(base)}/{len(results['torchrun'])}", "training again s": spread(base, digits=2)})
    return rows


def arguments(doc: str, kinds_known: tuple[str, ...], *extra: tuple[str, dict]) -> argparse.Namespace:
    """--runs, --kinds (checked against ``kinds_known``), --seed, --out and ``extra`` (flag, add_argument kw)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kinds", default=",".join(kinds_known))
    ap.add_argument("--seed", type=int, default=None, help="the fault moments' seed (printed; replays a run)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON there instead of bench/results/")
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    if set(args.kinds) - set(kinds_known):
        ap.error(f"--kinds: unknown {sorted(set(args.kinds) - set(kinds_known))}; use some of {', '.join(kinds_known)}")
    return args


def begin(args: argparse.Namespace, prefix: str) -> tuple[int, random.Random, Path]:
    """The seed (printed), its generator and a scratch folder the pods (uid 10001) can write below."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"fault seed {seed} (replay: --seed {seed})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the cleanup
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    tmp.chmod(0o755)
    print(f"scratch folder {tmp}", flush=True)
    return seed, random.Random(seed), tmp


def interleaved(name: str, results: dict, args: argparse.Namespace, one, after_repetition=None) -> None:
    """``args.runs`` repetitions of ``one(kind, i)`` for every kind, the results written after each run."""
    for i in range(args.runs):
        for kind in args.kinds:
            try:
                r = one(kind, i)
            except TimeoutError as e:
                r = {"kind": kind, "error": str(e)}
            print(json.dumps(r, default=str), flush=True)
            results["stoker"].append(r)
            write_results(name, results, args.out)
        if after_repetition is not None:
            after_repetition(i)


def finish(name: str, results: dict, args: argparse.Namespace, title: str, rows: list[dict]) -> int:
    results["table"] = rows
    print_table(f"{title} ({args.runs} runs per setting, 2 workers, tiny model, seed {results['seed']}); "
                "median [min, max]", rows, columns=list(dict.fromkeys(k for row in rows for k in row)))
    print(f"wrote {write_results(name, results, args.out)}")
    return 0


def main() -> int:
    args = arguments(__doc__, KINDS, ("--crash-cap", {"type": float, "default": 120.0,
                                                      "help": "how long plain torchrun may take to recover"}))
    seed, rng, tmp = begin(args, "bench-recovery-real-")
    results: dict = {"runs": args.runs, "kinds": args.kinds, "seed": seed, "steps": STEPS, "warm_steps": WARM_STEPS,
                     "nodes": "real (2)",
                     "code_at_start": code_version(), "stoker": [], "torchrun": []}

    def baseline(i: int) -> None:
        t = torchrun_crash(tmp, i, args.crash_cap)
        print(json.dumps({"baseline": "torchrun", **t}), flush=True)
        results["torchrun"].append(t)
        write_results("bench_recovery_real", results, args.out)
    cluster = None
    try:
        cluster, b, (image, _) = setup(tmp)
        interleaved("bench_recovery_real", results, args, lambda kind, i: one(b, image, tmp, kind, i, rng), baseline)
    finally:
        if cluster is not None:
            cluster.down()
    return finish("bench_recovery_real", results, args, "A SIGKILLed trainer on real nodes", table(results))


if __name__ == "__main__":
    sys.exit(main())
