"""Operator at scale, side by side: the same jobs as Stoker TrainingJobs, as Kubeflow
training-operator v1.8.1 PyTorchJobs (1 master + N-1 workers, built from its Go module), and as
bare pods (no operator: the floor), on the same kwok GPU nodes in the same run.

Per repetition each system runs once (order rotated per repetition), in a fresh namespace, with a
fresh operator process watching only that namespace. Measured per system and repetition:

- time from the first create until every worker pod is Running (a watch on the namespace's pods);
- per job: create -> all its pods Running, p50 and p99 over the jobs;
- API requests per job: the operator's own requests (the apiserver's audit log, by the
  operator's client-certificate user) from the first create until all are Running, plus the
  benchmark's creates; every client's requests (apiserver_request_total) as a cross-check;
- operator CPU seconds (/proc/<pid>/stat utime+stime) and peak RSS (VmHWM);
- status writes (PUT/PATCH on the status subresource) per job per minute during a hold window
  after all are Running (kwok pods run no code: no heartbeats reach Stoker here).

    .venv/bin/python bench/bench_operator_scale.py                        # 500 jobs x 4 workers, 3 reps
    .venv/bin/python bench/bench_operator_scale.py --jobs 20 --reps 1 --nodes 20 --hold 10 --out /tmp/x
    .venv/bin/python bench/bench_operator_scale.py --resummarize bench/results/bench_operator_scale.json

Writes bench/results/bench_operator_scale.json (``--out DIR``: elsewhere) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scale_observe as O  # noqa: E402
from bench import scale_systems as S  # noqa: E402
from bench.common import print_table, write_results  # noqa: E402
from bench.scale_report import goals, summary_rows, summarize_system  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402

CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"
NODE_GRACE = "50s"


def create_ns(c: LocalCluster, name: str) -> None:
    c.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
          ok=(201, 409))
    S.wait_until("the default ServiceAccount", lambda: c.api(
        "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default", ok=None)[0] == 200, 30, 0.05)


def pods_left(c: LocalCluster, ns: str) -> int:
    status, body = c.api("GET", f"/api/v1/namespaces/{ns}/pods?limit=1", ok=None)
    return 0 if status == 404 else len(body.get("items", [])) + int(body["metadata"].get("remainingItemCount") or 0)


def clean_up(c: LocalCluster, system: str, ns: str, timeout: float) -> float:
    """Delete the jobs and pods at once (grace 0) and the namespace; wait until no pod is left
    (their GPUs are free for the next system). Returns the seconds it took."""
    t0 = time.monotonic()
    paths = [f"/api/v1/namespaces/{ns}/pods?gracePeriodSeconds=0", f"/api/v1/namespaces/{ns}"]
    if system in S.PLURALS:
        group = "stoker.dev/v1alpha1" if system == "stoker" else "kubeflow.org/v1"
        paths.insert(0, f"/apis/{group}/namespaces/{ns}/{S.PLURALS[system]}")
    for path in paths:
        try:
            c.api("DELETE", path, ok=None)
        except TimeoutError:   # a collection of 2000 takes longer than the client waits; the server goes on
            pass
    S.wait_until(f"the pods of {ns} to go", lambda: pods_left(c, ns) == 0, timeout, 1.0)
    return time.monotonic() - t0


def per_job_seconds(watch: O.PodWatch, created: dict[str, float], workers: int) -> list[float]:
    """create -> all its pods Running, for every job whose pods all ran."""
    out = []
    for job, times in watch.per_job().items():
        if job in created and len(times) >= workers:
            out.append(max(times) - created[job])
    return sorted(out)


def stoker_reconciles(op: S.StokerOperator) -> dict[str, float]:
    m = op.metrics()
    n = m.get("stoker_reconcile_duration_seconds_count", 0.0)
    mean_ms = 1000 * m.get("stoker_reconcile_duration_seconds_sum", 0) / max(1, n)
    return {"passes": int(n), "mean_pass_ms": round(mean_ms, 2),
            "pods_created": int(m.get("stoker_worker_pods_created_total", 0))}


def measure(c: LocalCluster, system: str, rep: int, args: argparse.Namespace, workdir: Path,
            audit: O.AuditLog) -> dict:
    ns = f"scale-{system}-{'profiled' if rep < 0 else rep}-{os.urandom(2).hex()}"
    create_ns(c, ns)
    op = S.operator_for(system, c, workdir, dict(kv.split("=", 1) for kv in args.stoker_env))
    try:
        if op is not None:
            op.up(ns)
        return _measure(c, system, rep, args, workdir, audit, ns, op)
    finally:
        if op is not None:
            op.down()


def _measure(c: LocalCluster, system: str, rep: int, args: argparse.Namespace, workdir: Path, audit: O.AuditLog,
             ns: str, op) -> dict:
    pods = args.jobs * args.workers
    watch = O.PodWatch(c, ns, S.JOB_LABEL).start()
    cpu0 = S.cpu_seconds(op.pid) if op else 0.0
    off0, all0 = audit.offset(), O.apiserver_requests(c)
    w0, t0 = time.time(), time.monotonic()
    profiler = start_profiler(op.pid, workdir / f"py-spy-{ns}.txt", args) if rep < 0 and args.profile else None
    created = S.create_jobs(c, system, ns, args.jobs, args.workers)
    create_s = time.monotonic() - t0

    def all_running() -> bool:
        if watch.error is not None:
            raise RuntimeError(f"pod watch failed: {watch.error}")
        if op is not None and system == "stoker" and op.proc.poll() is not None:
            raise RuntimeError("the Stoker operator exited")
        return watch.count() >= pods

    S.wait_until(f"{pods} {system} pods Running", all_running, args.timeout, 0.1)
    running_at = max(t for _, t in watch.running.values())
    w1, all1 = time.time(), O.apiserver_requests(c)
    cpu1 = S.cpu_seconds(op.pid) if op else 0.0
    time.sleep(args.hold)
    w2 = time.time()
    out = {"system": system, "rep": rep, "namespace": ns, "create_calls_s": round(create_s, 3),
           "all_running_s": round(running_at - t0, 3), "job_s": [round(x, 3) for x in
                                                                   per_job_seconds(watch, created, args.workers)],
           "client_requests_per_job": S.client_requests_per_job(system, args.workers),
           "all_clients_requests_per_job": round((all1 - all0) / args.jobs, 2), "hold_s": round(w2 - w1, 1)}
    watch.stop()
    if op is not None:
        out.update(cpu_ramp_s=round(cpu1 - cpu0, 2), cpu_hold_s=round(S.cpu_seconds(op.pid) - cpu1, 2),
                   peak_rss_mib=round(S.status_kib(op.pid, "VmHWM") / 1024, 1))
        if system == "stoker":
            out["reconciles"] = stoker_reconciles(op)
        if profiler is not None:
            out["profile"] = stop_profiler(profiler)
        op.down()
        time.sleep(1.0)   # the audit log's last lines reach the file
        events = audit.events(off0)
        user = S.USERS[system]
        out["ramp"] = O.summarize(events, user, w0, w1)
        out["hold"] = O.summarize(events, user, w1, w2)
    out["cleanup_s"] = round(clean_up(c, system, ns, args.timeout), 1)
    c.log(f"[bench] rep {rep} {system}: all {pods} Running in {out['all_running_s']:.1f}s"
          f" (rss {out.get('peak_rss_mib', '-')} MiB, cleanup {out['cleanup_s']}s)")
    return out


def start_profiler(pid: int, path: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, Path] | None:
    """py-spy (``--profile``: its path) sampling the operator's threads while the jobs start."""
    proc = subprocess.Popen([args.profile, "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--nonblocking", "--output", str(path), "--duration", str(int(args.timeout))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, path


def stop_profiler(profiler: tuple[subprocess.Popen, Path]) -> dict:
    from bench.scale_report import top_frames

    proc, path = profiler
    proc.send_signal(2)   # py-spy writes its output on SIGINT
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return top_frames(path) if path.exists() else {"error": "py-spy wrote no profile"}


def run(args: argparse.Namespace) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="bench-scale-")
    workdir = Path(tmp.name)
    state = Path(args.cluster_dir) if args.cluster_dir else workdir / "cluster"
    O.write_audit_policy(state, sorted(S.USERS.values()))
    # Kubernetes' default grace period for silent nodes, not the dev cluster's 10 s test setting: with 260
    # kwok nodes on 2 busy cores kwok renews leases late, and a node marked lost fails its jobs' pods.
    c = LocalCluster(state, die_with_parent=not args.cluster_dir, node_monitor_grace_period=NODE_GRACE)
    samples, profile_run = [], None
    try:
        c.up()
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        c.wait_crd_established("trainingjobs.stoker.dev")
        S.KubeflowOperator(c).to.install_crd()
        nodes = c.add_kwok_nodes(args.nodes, gpus=8, prefix="bench-kwok", labels=S.POOL)
        audit = O.AuditLog(c.logs_dir / "audit.log")
        for rep in range(args.reps):
            order = S.SYSTEMS[rep % 3:] + S.SYSTEMS[:rep % 3]
            for system in [s for s in order if s in args.systems.split(",")]:
                samples.append(measure(c, system, rep, args, workdir, audit))
        # Where Stoker's time goes: one more Stoker run (rep -1) under py-spy, not among the samples.
        profile_run = measure(c, "stoker", -1, args, workdir, audit) if args.profile else None
        if args.cluster_dir:
            c.delete_nodes(nodes)
    finally:
        if not args.cluster_dir:
            c.down()
        tmp.cleanup()
    return {"jobs": args.jobs, "workers_per_job": args.workers, "pods": args.jobs * args.workers,
            "kwok_nodes": args.nodes, "gpus_per_node": 8, "reps": args.reps, "hold_s": args.hold, "samples": samples,
            "profile_run": profile_run, "node_monitor_grace_period": NODE_GRACE}


def report(results: dict, title: str) -> None:
    """The summary, goals and table from the samples (into ``results``), printed."""
    systems = {s: summarize_system([x for x in results["samples"] if x["system"] == s]) for s in S.SYSTEMS}
    results["summary"] = systems
    results["goals"] = goals(systems, results["samples"])
    results["table"] = summary_rows(systems)
    print_table(title, results["table"])
    for g in results["goals"]:
        print(f"goal: {g['goal']}: {'met' if g['met'] else 'MISSED'} ({g['measured']})")


def resummarize(path: Path) -> int:
    """A results file's summary, goals and table again from its raw samples with this report code;
    what the run recorded (samples, machine, load, command) stays, the re-summary is recorded."""
    from bench.common import code_version, write_json

    results = json.loads(path.read_text())
    report(results, f"operator scale (re-summarized from {path.name}): median [min, max]")
    results["resummarized"] = {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "command": [sys.executable, *sys.argv], **code_version()}
    write_json(path, results)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=0, help="kwok nodes, 8 GPUs each (default: max(250, pods/8 + 10))")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds the jobs are kept Running after all are")
    ap.add_argument("--timeout", type=float, default=900.0, help="per system and repetition")
    ap.add_argument("--profile", default="", help="path of py-spy: one more Stoker run, sampled (not in the samples)")
    ap.add_argument("--cluster-dir", default=None, help="reuse (and leave running) the cluster in this dir")
    ap.add_argument("--out", default=None, help="write the results file here instead of bench/results")
    ap.add_argument("--stoker-env", action="append", default=[], metavar="K=V", help="extra operator environment")
    ap.add_argument("--systems", default=",".join(S.SYSTEMS), help="a subset, for probes (the results need all three)")
    ap.add_argument("--resummarize", default=None, metavar="FILE", help="only redo FILE's summary from its samples")
    args = ap.parse_args()
    if args.resummarize:
        return resummarize(Path(args.resummarize))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the operators and the cluster on the way out
    pods = args.jobs * args.workers
    args.nodes = args.nodes or max(250, math.ceil(pods / 8) + 10)
    if args.nodes * 8 < pods:
        ap.error(f"{args.nodes} nodes x 8 GPUs cannot hold {pods} pods")
    results = run(args)
    if set(args.systems.split(",")) != set(S.SYSTEMS):   # a probe: no side-by-side, no goals
        for x in results["samples"]:
            print({k: v for k, v in x.items() if k not in ("job_s", "profile")})
        write_results("bench_operator_scale", results, Path(args.out or "/tmp"))
        return 0
    report(results, f"operator scale, {args.jobs} jobs x {args.workers} workers ({pods} pods) on {args.nodes} kwok "
                    f"nodes, {args.reps} reps: median [min, max]")
    write_results("bench_operator_scale", results, Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
