"""A lost node on real nodes (issue 12): how fast Stoker trains again, with and without a hot spare.

The test bed of bench/chaos_real.py with 4 real nodes (kubelet + containerd + kube-proxy, each in its own
network namespace, 2 GPUs each through the test bed's device plugin), the Helm-installed operator and its
rendezvous store on real-node-0, MinIO. A 2-worker job of the built-in trainer (the recovery tests' tiny
model, S3 checkpoint every 5 steps, non-root) whose pods each ask for both GPUs of a node (one pod per
node). Once every pod's warm process said it is ready, and then 10-60 steps and a random fraction of a
step later (seeded, ``--seed`` replays), the node of a worker that is not the operator's is stopped as a
machine stops (kubelet, containerd and every container SIGKILLed, its network namespace gone). Settings,
side by side in each repetition:

  node-spare      ``spares: 1`` and the in-memory tier (``memoryIntervalSteps: 1``): the spare takes the
                  lost rank in its pod, the survivor restarts in place, both from memory (the lost rank's
                  snapshot from its copy on the survivor's pod)
  node-new-pods   no spare, S3 only (the failure policy's defaults): what the job does without a spare

Measured from the stop: ``detect`` (the incident in status), ``recover`` (the first step of a trainer
started after the stop, from the step journal on a host folder mounted into the pods: the witness, not
something the system uses), ``lost`` (steps computed before the stop past where training resumed). Each
job must end Succeeded. The lost node is started again after each run.

    .venv/bin/python bench/bench_node_loss_real.py [--runs 5] [--kinds node-spare,node-new-pods] [--seed N]
        [--out DIR]      (root, Linux: the real-node packages, see `make test-realnodes`)

Writes bench/results/bench_node_loss_real.json (or DIR/...) after every run and prints a table.
"""
from __future__ import annotations

import json
import random
import signal
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_recovery import restarted_steps, work_lost  # noqa: E402
from bench.bench_recovery_real import READY, arguments, begin, finish, interleaved, timing_row  # noqa: E402
from bench.chaos_real import GPUS, OPERATOR_NODE, import_if_missing, setup, shared_dir, trainer_job  # noqa: E402
from bench.common import code_version  # noqa: E402
from bench.recovery_baseline import trainer_cfg, wait  # noqa: E402
from tests.realnodes_tests import operator_helm as H  # noqa: E402
from tests.recovery_tests import faults as F  # noqa: E402

KINDS = ("node-spare", "node-new-pods")
NODES = 4
STEPS = 1500   # the warm processes import first (10-15 s of training); the stop comes 10-60 steps after
GPU = "nvidia.com/gpu"


def job_body(b, image: str, out: Path, name: str, kind: str) -> dict:
    jdir = shared_dir(out / "journal")
    H.apply_config_map(b.c, b.ns, f"{name}-config", {"config.json": json.dumps(trainer_cfg(out, STEPS, None))})
    spare = kind == "node-spare"
    body = trainer_job(b.bucket, image, name, out, jdir, {}, memory_every=1 if spare else None)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: GPUS}}   # a whole node
    if spare:
        body["spec"]["spares"] = 1
    return body


def pods_ready(b, name: str, n: int) -> dict[str, str]:
    """Once the job's ``n`` pods run and each one's warm process said it is ready: pod -> node."""
    def ready():
        pods = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in b.pods(name)}
        said = lambda pod: READY in b.c.kubectl("logs", "-n", b.ns, pod, check=False).stdout  # noqa: E731
        return pods if len(pods) == n and all(said(p) for p in pods) else None
    return wait("the pods' warm processes ready", ready, 240, 1.0)


def one(b, image: str, archive: Path, tmp: Path, kind: str, i: int, rng: random.Random) -> dict:
    name = f"{kind.replace('node-', 'n')}-{i}-{uuid.uuid4().hex[:4]}"
    out = shared_dir(tmp / name)
    jdir = out / "journal"
    b.c.kubectl("apply", "-n", b.ns, "-f", "-", input=json.dumps(job_body(b, image, out, name, kind)))
    status = lambda: b.status(name)  # noqa: E731
    pods = pods_ready(b, name, 3 if kind == "node-spare" else 2)
    after = time.time()
    moment = F.at_random_moment(rng, jdir, lambda: int(status().get("incarnation", 0)), min_steps=10,
                                max_steps=60, after_t=after, timeout=300)
    beats = {h["pod"]: h["rank"] for h in status().get("workerHeartbeats") or []}
    victim = max((p for p in beats if pods.get(p) != OPERATOR_NODE), key=lambda p: beats[p])  # rank 1 if it can
    node = b.c.real_nodes().node(int(pods[victim].rsplit("-", 1)[1]))
    t0 = time.time()
    b.c.real_nodes().stop_node(node, sig=signal.SIGKILL)
    stop_s = time.time() - t0
    inc = wait("incident", lambda: next((i for i in status().get("incidents") or []
                                         if i.get("kind") in ("Restart", "Replace")), None), 300, 0.1)
    t_detect = time.time()
    first = min(wait("a restarted trainer's first step", lambda: restarted_steps(jdir, t0), 300))
    wait("job Succeeded", lambda: status().get("phase") in ("Succeeded", "Failed"), 600, 0.5)
    st, m = status(), work_lost(jdir, t0)
    revive_s = revive(b, image, archive)
    return {"kind": kind, "phase": st.get("phase"), "cause": inc.get("detectedCause"), "incident": inc.get("kind"),
            "spare": bool(inc.get("spare")), "node": node.name, "pod": victim, "stop_s": stop_s,
            "detect_s": t_detect - t0, "recover_s": first - t0, "after_detect_s": first - t_detect,
            "incarnation": st.get("incarnation"), "operator_latency_s": inc.get("detectionLatencySeconds"),
            "fault_at": moment, "revive_s": revive_s, **{k: m[k] for k in ("resumed_at", "resumed_from", "lost_steps")}}


def revive(b, image: str, archive: Path) -> float:
    """The lost node started again (the trainers' image imported where it is missing)."""
    t0 = time.monotonic()
    rn = b.c.real_nodes()
    rn.up(NODES, gpus=GPUS)
    for node in rn.known():
        import_if_missing(node.containerd_sock, image, archive)
    return time.monotonic() - t0


def table(results: dict) -> list[dict]:
    rows = []
    for kind in results["kinds"]:
        row, rs = timing_row(kind, results["stoker"])
        rows.append({**row, "spare": f"{sum(r['spare'] for r in rs)}/{len(rs)}",
                     "causes": "/".join(sorted({str(r["cause"]) for r in rs}))})
    return rows


def main() -> int:
    args = arguments(__doc__, KINDS)
    seed, rng, tmp = begin(args, "bench-node-loss-real-")
    results: dict = {"runs": args.runs, "kinds": args.kinds, "seed": seed, "steps": STEPS, "nodes": f"real ({NODES})",
                     "code_at_start": code_version(), "stoker": []}
    cluster = None
    try:
        cluster, b, (image, archive) = setup(tmp, nodes=NODES)

        def run(kind: str, i: int) -> dict:
            try:
                return one(b, image, archive, tmp, kind, i, rng)
            except TimeoutError:
                revive(b, image, archive)   # the next run needs every node
                raise
        interleaved("bench_node_loss_real", results, args, run)
    finally:
        if cluster is not None:
            cluster.down()
    return finish("bench_node_loss_real", results, args, "A lost node on real nodes", table(results))


if __name__ == "__main__":
    sys.exit(main())
