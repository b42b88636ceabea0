"""Failure detection and recovery: how fast Stoker notices a failure and trains again.

For each fault kind, ``--runs`` times (median and worst reported):

  crash  SIGKILL one worker's trainer process: restarted in place (the default,
         spec.failurePolicy.inPlaceRestarts), the pods and the incarnation kept
  crash-memory  crash with the in-memory tier (spec.checkpoint.memoryIntervalSteps: 1): restarted in
         place from the step every rank holds in its pod's memory, not from the last S3 checkpoint
  crash-incarnation  the same with inPlaceRestarts: 0 (the old path: new pods, a new incarnation)
  hang   SIGSTOP one worker's trainer process (its peers block in the all-reduce)
  node   SIGKILL one process node's agent (the machine is gone): seen from the heartbeat stream (every
         rank on the node quiet at once) and the node's kubelet not answering, before its NotReady
  node-spare  node, on a job with a hot spare (spec.spares: 1, its 3 pods on 3 nodes): the other worker
         restarts in place and the spare takes the lost rank (no new pods, no new incarnation)
  node-spare-memory  node-spare with the in-memory tier (memoryIntervalSteps: 1): the lost rank's snapshot
         comes from its copy on the survivor's pod, not from S3
  collective  SIGUSR1 one worker's trainer (debug.stuck_collective_on_signal): its next collective never
         completes, every rank waits in it, alive and heartbeating (a stuck collective)

on a 2-worker built-in-trainer job (tiny model, checkpoint every 5 steps to MinIO)
run by the operator on process nodes of a local control plane. Each fault lands at a
random moment of real training (seeded, ``--seed`` replays; the step journal shows the
job training, 10-60 steps pass, then a random fraction of a step: mid-step, never a
trainer parked in a debug stall). The failure policy is the default a user gets unless
``--progress-timeout`` says otherwise (recorded in the JSON). Measured from the moment
the fault is injected:

  detect   until status.incidents records it (what the operator acted on)
  recover  until the new incarnation computed its first step (the step journal)
  after detect  recover - detect (issue 12's goal for a lost node: training again <= 5 s after detection)
  lost     steps computed before the fault that were computed again (past the resume point)
  step     median seconds per step before the fault (what a memory snapshot per step costs)

Baseline, measured in the same run: plain ``torchrun --max-restarts=3`` (no
Stoker) on the same trainer and config. A crash is seen by torchrun's agent
(which restarts its workers); a hang is never seen by it (gloo's collective
timeout is 30 minutes) -- reported as "not detected within --hang-cap seconds";
a lost machine has no single-machine torchrun equivalent (n/a).

Goodput under periodic failures is bench/bench_goodput.py.

    .venv/bin/python bench/bench_recovery.py [--runs 5] [--kinds crash,crash-incarnation,hang,node,collective]
        [--seed N] [--cluster-dir DIR] [--out DIR]   (kinds: also crash-memory, node-spare)

Writes bench/results/bench_recovery.json (or DIR/bench_recovery.json) and prints a table.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, machine_info, print_table, write_results  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402
from stoker.worker import journal  # noqa: E402
from tests.recovery_tests import faults as F  # noqa: E402
from bench.recovery_baseline import (TORCHRUN_ENV, torchrun_crash, torchrun_hang, trainer_cfg,  # noqa: E402
                                     trainer_pid, wait)

CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"
POOL_LABEL = "stoker.dev/bench-pool"


class Bench:
    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        self.c = cluster
        self.tmp = tmp
        self.ns = f"bench-recovery-{uuid.uuid4().hex[:6]}"
        self.bucket = self.ns
        self.nodes: list[str] = []
        self.op: subprocess.Popen | None = None
        self._jobs = None  # CustomObjectsApi, made on first use

    # ------------------------------------------------------------------ setup
    def setup(self, nodes: int = 4) -> None:
        self.c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        self.c.wait_crd_established("trainingjobs.stoker.dev")
        self.c.kubectl("create", "namespace", self.ns)
        wait("default service account", lambda: self.c.kubectl("get", "sa", "default", "-n", self.ns,
                                                               check=False).returncode == 0, 60, 0.2)
        self.c.create_s3_secret(self.ns)
        import boto3

        e = self.c.s3_env()
        self.s3 = boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL_S3"], aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name=e["AWS_DEFAULT_REGION"])
        self.s3.create_bucket(Bucket=self.bucket)
        for _ in range(nodes):
            self.add_node()
        self.start_operator()

    def add_node(self) -> str:
        name = f"br-{uuid.uuid4().hex[:6]}"
        self.c.start_process_node(name, gpus=0, labels={POOL_LABEL: self.ns})
        self.nodes.append(name)
        return name

    def start_operator(self) -> None:
        env = dict(os.environ)
        env.update({
            "STOKER_OPERATOR_KUBECONFIG": str(self.c.kubeconfig),
            "STOKER_OPERATOR_NAMESPACES": self.ns,
            "STOKER_OPERATOR_METRICS_PORT": str(free_port()),
            "STOKER_OPERATOR_RENDEZVOUS_PORT": str(free_port()),
            "STOKER_OPERATOR_RESYNC_SECONDS": "1",
            "STOKER_OPERATOR_HEARTBEAT_ADDRESS": f"127.0.0.1:{free_port()}",
            "STOKER_OPERATOR_HEARTBEAT_INTERVAL_SECONDS": "1",
            "STOKER_OPERATOR_S3_ENDPOINT": self.c.s3_endpoint,
        })
        log = open(self.tmp / "operator.log", "ab")
        self.op = subprocess.Popen([sys.executable, "-m", "stoker.operator.main"], env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)

    def teardown(self) -> None:
        if self.op and self.op.poll() is None:
            os.killpg(self.op.pid, signal.SIGKILL)
            self.op.wait()
        for n in self.nodes:
            self.c.stop_process_node(n)
        self.c.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)
        self.c.delete_nodes(self.nodes)

    # ------------------------------------------------------------------ jobs
    def status(self, name: str) -> dict:
        """The job's status through the API client: the benchmarks poll it often, and a
        kubectl process per look would take its CPU from the trainers being measured."""
        if self._jobs is None:
            from kubernetes import client, config

            self._jobs = client.CustomObjectsApi(config.new_client_from_config(config_file=str(self.c.kubeconfig)))
        try:
            job = self._jobs.get_namespaced_custom_object("stoker.dev", "v1alpha1", self.ns, "trainingjobs", name)
        except Exception:  # noqa: BLE001 - not there yet / a blip: ask again next time
            return {}
        return job.get("status") or {}

    def create(self, name: str, cfg: dict, failure_policy: dict, ckpt_every: int = 5,
               extra_env: dict[str, str] | None = None, memory_every: int | None = None, spares: int = 0) -> Path:
        out = self.tmp / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg))
        body = {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
                "spec": {"replicas": 2,
                         "template": {"spec": {"containers": [{
                             "name": "trainer", "image": "local/python",
                             "command": [sys.executable, "-m", "stoker.worker.train", str(out / "config.json")],
                             "env": [{"name": "OMP_NUM_THREADS", "value": "1"},
                                     *({"name": k, "value": v} for k, v in (extra_env or {}).items())]}],
                             "terminationGracePeriodSeconds": 5, "nodeSelector": {POOL_LABEL: self.ns}}},
                         "checkpoint": {"uri": f"s3://{self.bucket}/{name}", "intervalSteps": ckpt_every,
                                        "credentialsSecretRef": {"name": "stoker-s3"},
                                        **({"memoryIntervalSteps": memory_every} if memory_every else {})},
                         "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 0, **failure_policy}}}
        if spares:   # a node lost takes one pod: the job's pods on nodes of their own
            body["spec"]["spares"] = spares
            body["spec"]["template"]["spec"]["affinity"] = {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"stoker.dev/job-name": name}}}]}}
        self.c.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(body))
        return out

    def pods(self, name: str) -> list[dict]:
        out = self.c.kubectl("get", "pods", "-n", self.ns, "-l", f"stoker.dev/job-name={name}", "-o", "json",
                             check=False)
        try:
            return json.loads(out.stdout)["items"]
        except (ValueError, KeyError):
            return []

    def pod_node(self, pod: str) -> str:
        out = self.c.kubectl("get", "pod", pod, "-n", self.ns, "-o", "jsonpath={.spec.nodeName}")
        return out.stdout.strip()

    def one(self, kind: str, i: int, rng: random.Random, progress_timeout: float | None) -> dict:
        """One fault at a random moment of real training (mid-step: the step journal shows
        the incarnation training, a random number of steps pass, then a random fraction of
        a step), never into a trainer parked in a debug stall."""
        name = f"{kind}-{i}-{uuid.uuid4().hex[:4]}"
        fp = {"heartbeatTimeoutSeconds": 300} if kind.startswith("node") else {}
        if kind == "crash-incarnation":
            fp["inPlaceRestarts"] = 0
        if progress_timeout:
            fp["progressTimeoutSeconds"] = progress_timeout
        jdir = self.tmp / name / "journal"
        cfg = trainer_cfg(self.tmp / name, 400, None)
        if kind == "collective":
            cfg["debug"] = {"stuck_collective_on_signal": True}
        self.create(name, cfg, fp, extra_env={"STOKER_STEP_JOURNAL_DIR": str(jdir)},
                    memory_every=1 if kind.endswith("-memory") else None,
                    spares=1 if kind.startswith("node-spare") else 0)
        pod = f"{name}-worker-1-0"
        moment = F.at_random_moment(rng, jdir, lambda: int(self.status(name).get("incarnation", 0)),
                                    min_steps=10, max_steps=60, timeout=300)
        if kind.startswith("node-spare"):   # a worker's pod, not the spare's (which has no trainer)
            pod = wait("a worker pod", lambda: next((f"{name}-worker-{i}-0" for i in (1, 0, 2)
                                                     if trainer_pid(pod_name=f"{name}-worker-{i}-0")), None), 30)
        if kind.startswith("node"):
            node = self.pod_node(pod)
            doomed = self.c.node_processes(node)  # found first: the fault is the kill, not the search
            t0 = time.time()
            for pid in doomed:  # the machine is gone: every process on it at once
                F.signal_pid(pid, signal.SIGKILL)
            self.c.stop_process_node(node, sig=signal.SIGKILL)
            self.nodes.remove(node)
            self.add_node()  # keep the pool size for the next run
        else:
            pid = wait("trainer pid", lambda: trainer_pid(pod_name=pod), 30)
            t0 = time.time()
            os.kill(pid, {"crash": signal.SIGKILL, "crash-incarnation": signal.SIGKILL, "crash-memory": signal.SIGKILL,
                          "collective": signal.SIGUSR1}.get(kind, signal.SIGSTOP))
        # The restart's incident: a save the fault cut records a CheckpointFailed first
        # (a survivor's), which is not the detection of the fault.
        inc = wait("incident", lambda: next((i for i in self.status(name).get("incidents") or []
                                             if i.get("kind") in ("Restart", "Replace")), None), 600, 0.1)
        t_detect = time.time()
        first = wait("recovery", lambda: restarted_steps(jdir, t0), 600)
        if kind == "hang":
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait("job Succeeded", lambda: self.status(name).get("phase") == "Succeeded", 600, 0.2)
        st = self.status(name)
        return {"kind": kind, "cause": inc.get("detectedCause"), "detect_s": t_detect - t0,
                "recover_s": min(first) - t0, "operator_latency_s": inc.get("detectionLatencySeconds"),
                # in place: recorded as such and no new incarnation followed (a fallback makes one)
                "in_place": bool(inc.get("inPlace")) and not st.get("incarnation"), "spare": bool(inc.get("spare")),
                "after_detect_s": min(first) - t_detect,
                "incarnation": st.get("incarnation"),
                "phases_s": restart_phases(jdir, t0), "fault_at": moment, **work_lost(jdir, t0)}


def _since(jdir: Path, t0: float) -> tuple[list[dict], set[tuple[str, int]]]:
    """The journal, and the trainer processes (``_proc``) that were running before ``t0``."""
    recs = journal.read(jdir)
    return recs, {journal.writer(r) for r in recs if r["t"] < t0}


def restarted_steps(jdir: Path, t0: float) -> list[float]:
    """Times of the steps computed after ``t0`` by trainer processes that started after it (an
    in-place restart keeps the incarnation, so the new processes are told by their pods and pids)."""
    recs, before = _since(jdir, t0)
    return [r["t"] for r in recs if r["event"] == "step" and r["t"] > t0 and journal.writer(r) not in before]


def work_lost(jdir: Path, t0: float) -> dict:
    """Where the restart resumed (from S3 or memory), the steps computed before ``t0`` past that point
    (computed twice), and the median step time before the fault (rank 0)."""
    recs, before = _since(jdir, t0)
    done = [r["step"] for r in recs if r["event"] == "step" and journal.writer(r) in before]
    resumes = [r for r in recs if r["event"] in RESUMED and journal.writer(r) not in before]
    at = resumes[0]["step"] if resumes else 0
    times = sorted(r["t"] for r in recs if r["event"] == "step" and journal.writer(r) in before and r["rank"] == 0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"resumed_at": at, "resumed_from": resumes[0]["event"] if resumes else None,
            "lost_steps": len({s for s in done if s > at}),
            "step_s": round(statistics.median(gaps), 4) if gaps else None}


RESUMED = ("resumed", "resumed_from_memory")  # a restore from S3, or from the in-memory tier


def restart_phases(jdir: Path, t0: float) -> dict:
    """Where the seconds of a restart went, from the fault (seconds after ``t0``, the slowest of the
    new trainer processes): its journal opened (the Session: torch and the trainer imported, after
    the launcher noticed, the rendezvous and the process start), resumed (process group and restore
    from S3), its first step."""
    recs, before = _since(jdir, t0)
    old_pids = {pid for _, pid in before}   # a file's name gives its pid only (process nodes: unique)
    opened = [int(p.stem.rsplit("-", 1)[1]) / 1e9 for p in jdir.glob("*.jsonl")
              if int(p.stem.rsplit("-pid", 1)[1].split("-")[0]) not in old_pids]
    new = [r for r in recs if journal.writer(r) not in before and r["t"] > t0]

    def last_first(*events: str) -> float | None:
        firsts: dict[tuple[str, int], float] = {}
        for r in new:
            if r["event"] in events:
                firsts.setdefault(journal.writer(r), r["t"])
        return round(max(firsts.values()) - t0, 3) if firsts else None

    return {"session_opened": round(max(opened) - t0, 3) if opened else None,
            "resumed": last_first(*RESUMED), "first_step": last_first("step")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kinds", default="crash,crash-incarnation,hang,node,node-spare,collective")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here instead of bench/results")
    ap.add_argument("--hang-cap", type=float, default=60.0, help="how long the torchrun baseline is watched for a hang")
    ap.add_argument("--crash-cap", type=float, default=120.0, help="how long a torchrun baseline may take to recover")
    ap.add_argument("--cluster-dir", default=None, help="reuse a running local cluster (stoker cluster up --dir)")
    ap.add_argument("--seed", type=int, default=None, help="the fault moments' seed (printed; replays a run)")
    ap.add_argument("--progress-timeout", type=float, default=None,
                    help="spec.failurePolicy.progressTimeoutSeconds (default: unset, the default a user gets)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"fault seed {seed} (replay: --seed {seed})", flush=True)
    rng = random.Random(seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    kinds = [k for k in args.kinds.split(",") if k]
    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    cluster = LocalCluster(args.cluster_dir or tmp / "cluster", die_with_parent=not args.cluster_dir)
    cluster.up()
    b = Bench(cluster, tmp)
    results: dict = {"machine": machine_info(), "runs": args.runs, "seed": seed, "command": [sys.executable, *sys.argv],
                     "progress_timeout_s": args.progress_timeout or "default (unset)", "stoker": [], "torchrun": [],
                     "torchrun_env": TORCHRUN_ENV}
    try:
        b.setup()
        # Repetition by repetition, the kinds side by side (and plain torchrun's crash after Stoker's),
        # every result written as it comes: a run cut short keeps what it measured (the torchrun list
        # was empty in an earlier run, which ran all of it last and was cut by its timeout).
        for i in range(args.runs):
            for kind in kinds:
                try:
                    r = b.one(kind, i, rng, args.progress_timeout)
                except TimeoutError as e:
                    r = {"kind": kind, "error": str(e)}
                print(json.dumps(r), flush=True)
                results["stoker"].append(r)
                write_results("bench_recovery", results, args.out)
                if kind == "crash":
                    t = torchrun_crash(tmp, i, args.crash_cap)
                    print(json.dumps({"baseline": "torchrun", **t}), flush=True)
                    results["torchrun"].append(t)
                    write_results("bench_recovery", results, args.out)
        if "hang" in kinds:
            r = torchrun_hang(tmp, args.hang_cap)
            print(json.dumps({"baseline": "torchrun", **r}), flush=True)
            results["torchrun"].append(r)
    finally:
        b.teardown()
        if not args.cluster_dir:
            cluster.down()

    rows = []
    for kind in kinds:
        rs = [r for r in results["stoker"] if r["kind"] == kind and "error" not in r]
        if not rs:
            rows.append({"fault": kind, "cause": "no successful run"})
            continue
        base_kind = "crash" if kind.startswith("crash") else kind   # both crash variants against torchrun's crash
        base = [r["recover_s"] for r in results["torchrun"] if r["kind"] == base_kind and r["recover_s"] is not None]
        row = {"fault": kind, "cause": rs[0]["cause"], "ok runs": len(rs),
               "detect median s": statistics.median(r["detect_s"] for r in rs),
               "detect worst s": max(r["detect_s"] for r in rs),
               "recover median s": statistics.median(r["recover_s"] for r in rs),
               "recover best s": min(r["recover_s"] for r in rs),
               "recover worst s": max(r["recover_s"] for r in rs),
               "after detect median s": statistics.median(r["after_detect_s"] for r in rs),
               "after detect worst s": max(r["after_detect_s"] for r in rs),
               "in place": f"{sum(r.get('in_place', False) for r in rs)}/{len(rs)}",
               "lost steps median": statistics.median(r["lost_steps"] for r in rs),
               "lost steps worst": max(r["lost_steps"] for r in rs),
               "step median s": statistics.median(r["step_s"] for r in rs if r.get("step_s") is not None)}
        failed = sum(1 for r in results["torchrun"] if r["kind"] == base_kind and r["recover_s"] is None)
        if kind.startswith("crash") and base:
            row["torchrun recover median s"] = statistics.median(base)
            row["ratio vs torchrun"] = row["recover median s"] / statistics.median(base)
            if failed:
                row["torchrun recover median s"] = f"{statistics.median(base):.2f} ({failed} never recovered)"
        elif kind == "hang":
            hang = [r for r in results["torchrun"] if r["kind"] == "hang"]
            if hang and hang[0]["recover_s"] is None:
                row["torchrun recover median s"] = f"none in {args.hang_cap:g}s watched"
                row["ratio vs torchrun"] = f"< {row['recover median s'] / args.hang_cap:.2f}"
            elif hang:
                row["torchrun recover median s"] = hang[0]["recover_s"]
                row["ratio vs torchrun"] = row["recover median s"] / hang[0]["recover_s"]
        else:
            row["torchrun recover median s"] = "n/a"
            row["ratio vs torchrun"] = "n/a"
        rows.append(row)
    results["table"] = rows
    print_table(f"Recovery ({args.runs} runs per fault, 2 workers, tiny model; load {os.getloadavg()[0]:.1f})", rows)
    path = write_results("bench_recovery", results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
