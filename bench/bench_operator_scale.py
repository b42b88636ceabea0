"""Operator at scale: 50 TrainingJobs created at once on kwok GPU nodes.

Measures the wall time until every job is Running with all its workers ready,
and the operator's peak RSS. Baseline, measured in the same run on the same
control plane: the same number of bare pods created directly (no operator),
until all are Running. The ratio is the operator's overhead on top of what the
API server, scheduler and kwok need anyway.

    .venv/bin/python bench/bench_operator_scale.py [--jobs 50] [--workers 2] [--cluster-dir DIR]

Writes bench/results/bench_operator_scale.json and prints a table.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, machine_info, print_table, write_results  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402

CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"
POOL = {"stoker.dev/bench-pool": "operator-scale"}


def kwok_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "baseline"}},
            "spec": {"nodeSelector": POOL, "restartPolicy": "Never",
                     "containers": [{"name": "trainer", "image": "local/python", "command": ["python", "train.py"],
                                     "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}


def job(name: str, workers: int) -> dict:
    return {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": workers, "minReplicas": 1, "maxReplicas": workers * 2,
                     "template": {"spec": {"nodeSelector": POOL, "containers": [
                         {"name": "trainer", "image": "local/python", "command": ["python", "train.py"],
                          "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def create_ns(c: LocalCluster, name: str) -> None:
    c.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
          ok=(201, 409))
    deadline = time.monotonic() + 30
    while c.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default", ok=None)[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("default ServiceAccount never appeared")
        time.sleep(0.05)


def baseline(c: LocalCluster, ns: str, n: int) -> float:
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: c.api("POST", f"/api/v1/namespaces/{ns}/pods", kwok_pod(f"p{i}"), ok=(201,)), range(n)))
    while True:
        _, pods = c.api("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=bench%3Dbaseline", ok=(200,))
        if sum(p.get("status", {}).get("phase") == "Running" for p in pods["items"]) == n:
            return time.monotonic() - t0
        if time.monotonic() - t0 > 600:
            raise RuntimeError("baseline pods never all Running")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resync-seconds", type=float, default=10)
    ap.add_argument("--cluster-dir", default=None, help="reuse (and leave running) the cluster in this dir")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench-operator-")
    c = LocalCluster(args.cluster_dir or Path(tmp.name) / "cluster", die_with_parent=not args.cluster_dir)
    op = None
    try:
        c.up()
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        c.wait_crd_established("trainingjobs.stoker.dev")
        pods = args.jobs * args.workers
        nodes = c.add_kwok_nodes(pods // 8 + 2, gpus=8, prefix="bench-kwok", labels=POOL)
        suffix = os.urandom(3).hex()
        base_ns, op_ns = f"bench-base-{suffix}", f"bench-op-{suffix}"
        create_ns(c, base_ns)
        create_ns(c, op_ns)

        base_s = baseline(c, base_ns, pods)
        c.api("DELETE", f"/api/v1/namespaces/{base_ns}", ok=(200, 202))

        metrics_port = free_port()
        env = dict(os.environ, STOKER_OPERATOR_KUBECONFIG=str(c.kubeconfig), STOKER_OPERATOR_NAMESPACES=op_ns,
                   STOKER_OPERATOR_METRICS_PORT=str(metrics_port), STOKER_OPERATOR_RENDEZVOUS_PORT="0",
                   STOKER_OPERATOR_RESYNC_SECONDS=str(args.resync_seconds), STOKER_OPERATOR_LOG_LEVEL="WARNING")
        log = open(Path(tmp.name) / "operator.log", "wb")
        op = subprocess.Popen([sys.executable, "-m", "stoker.operator.main"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).read()
                break
            except OSError:
                if op.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("operator did not start: " + (Path(tmp.name) / "operator.log").read_text()[-2000:])
                time.sleep(0.1)
        idle_rss = rss_kib(op.pid, "VmRSS")

        t0 = time.monotonic()
        path = f"/apis/stoker.dev/v1alpha1/namespaces/{op_ns}/trainingjobs"
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: c.api("POST", path, job(f"j{i}", args.workers), ok=(201,)), range(args.jobs)))
        created_s = time.monotonic() - t0
        peak_rss = 0
        while True:
            peak_rss = max(peak_rss, rss_kib(op.pid, "VmRSS"))
            _, jobs = c.api("GET", path, ok=(200,))
            running = sum(j.get("status", {}).get("phase") == "Running"
                          and j["status"].get("readyReplicas") == args.workers for j in jobs["items"])
            if running == args.jobs:
                break
            if time.monotonic() - t0 > 600 or op.poll() is not None:
                raise RuntimeError(f"only {running}/{args.jobs} jobs Running")
            time.sleep(0.1)
        op_s = time.monotonic() - t0
        peak_rss = max(peak_rss, rss_kib(op.pid, "VmHWM"))
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        m = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line and not line.startswith("#") and len(line.split()) == 2}
        passes = m.get("stoker_reconcile_duration_seconds_count", 0)
        mean_pass_ms = 1000 * m.get("stoker_reconcile_duration_seconds_sum", 0) / max(1, passes)

        results = {
            "jobs": args.jobs, "workers_per_job": args.workers, "pods": pods, "kwok_nodes": len(nodes),
            "baseline_bare_pods_running_s": round(base_s, 3),
            "operator_all_jobs_running_s": round(op_s, 3),
            "operator_job_create_calls_s": round(created_s, 3),
            "ratio_vs_baseline": round(op_s / base_s, 3),
            "operator_idle_rss_mib": round(idle_rss / 1024, 1),
            "operator_peak_rss_mib": round(peak_rss / 1024, 1),
            "reconcile_passes": int(passes),
            "reconcile_mean_ms": round(mean_pass_ms, 2),
            "pods_created": int(m.get("stoker_worker_pods_created_total", 0)),
            "machine": machine_info(),
        }
        rows = [
            {"measure": f"{pods} bare pods Running (baseline)", "value": base_s, "unit": "s", "ratio": 1.0},
            {"measure": f"{args.jobs} jobs x {args.workers} workers Running", "value": op_s, "unit": "s",
             "ratio": op_s / base_s},
            {"measure": "operator RSS idle", "value": idle_rss / 1024, "unit": "MiB", "ratio": ""},
            {"measure": "operator RSS peak", "value": peak_rss / 1024, "unit": "MiB", "ratio": ""},
            {"measure": "reconcile passes", "value": int(passes), "unit": "", "ratio": ""},
            {"measure": "mean reconcile pass", "value": mean_pass_ms, "unit": "ms", "ratio": ""},
        ]
        print_table("operator scale (kwok GPU nodes)", rows, ["measure", "value", "unit", "ratio"])
        write_results("bench_operator_scale", results)
        if args.cluster_dir:
            c.api("DELETE", f"/api/v1/namespaces/{op_ns}", ok=(200, 202))
            c.delete_nodes(nodes)
        return 0
    finally:
        if op is not None and op.poll() is None:
            os.killpg(op.pid, signal.SIGKILL)
            op.wait()
        if not args.cluster_dir:
            c.down()
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
