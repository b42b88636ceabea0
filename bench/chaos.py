"""Chaos suite: many TrainingJobs, faults at random moments of real training, and for
every job the checks that matter (issue 11).

    .venv/bin/python bench/chaos.py [--profile default|short] [--seed N] [--cluster-dir DIR]
    make chaos          # the default profile: >= 100 faults across 10 kinds (75 min on 2 cores, 2026-12-02)

Jobs (2 workers each, one at a time, on a pool of 2 process nodes) cycle through three
configs of the built-in trainer: the demo model with DDP, a 2-stage 1F1B pipeline and
ZeRO-3. Each job gets a few faults drawn from the kinds in bench/chaos_faults.py, each
at a random moment of training (seeded; the seed is printed and saved: ``--seed N``
replays the same choices). Per job it checks:

  succeeded      the job ends Succeeded
  identical      final parameters (the trainer's checksum) == an undisturbed torchrun
                 run of the same config and world size
  newest commit  every restart resumed from the newest checkpoint committed before it,
                 never from one without COMMITTED; recomputed steps (counted from the
                 append-only step journal, per incarnation) <= steps since that commit
  pods           never two live pods for one worker index, no process of the job left
                 after it ended
  budget         restarts counted as infrastructure (userError 0), total == incarnation

and per fault: detect (until status.incidents records it) and recover (until a step of
the new incarnation is in the journal), from the moment of injection. The default
profile runs with the failure-policy defaults a user gets; the short profile (``make
test`` runs it, tests/test_chaos.py) sets progressTimeoutSeconds=5 to stay short, and
says so in its JSON. Results: bench/results/chaos.json (raw samples, commit, machine,
load average, command line, seed), or chaos-short.json for the short profile.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import chaos_faults as K  # noqa: E402
from bench.chaos_report import failures, landed, table  # noqa: E402
from bench.bench_recovery import Bench  # noqa: E402
from bench.common import code_version, print_table, write_results  # noqa: E402
from stoker.common.layout import COMMIT_MARKER, parse_step_dir  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402
from stoker.worker import journal  # noqa: E402
from tests.recovery_tests import faults as F  # noqa: E402
from tests.recovery_tests.conftest import reference_run  # noqa: E402
from tests.recovery_tests.trainer_configs import trainer_config  # noqa: E402

PROFILES = {
    # faults: how many fault events; per_job: faults per job; kinds: drawn round-robin in a seeded order
    "default": {"faults": 100, "per_job": 4, "kinds": list(K.KINDS), "s3_outage_s": (10.0, 60.0),
                "failure_policy": {}, "steps": 240},
    "short": {"faults": 10, "per_job": 4, "kinds": list(K.KINDS), "s3_outage_s": (10.0, 12.0),
              "failure_policy": {"progressTimeoutSeconds": 5}, "steps": 200},
}
CONFIGS = ("demo", "pipeline", "zero3")


def job_config(kind: str, steps: int) -> dict:
    cfg = trainer_config(steps)
    if kind == "pipeline":
        cfg["model"]["tie_embeddings"] = False
        cfg["parallel"] = {"mode": "pipeline-1f1b", "pp": 2}
    elif kind == "zero3":
        cfg["parallel"] = {"mode": "zero3"}
    return cfg


class Suite:
    def __init__(self, bench: Bench, rng: random.Random, profile: dict, tmp: Path) -> None:
        self.b, self.rng, self.p, self.tmp = bench, rng, profile, tmp
        self.refs: dict[tuple[str, int], str] = {}
        self.lost_nodes: list[str] = []

    # ------------------------------------------------------------------ plumbing
    def reference(self, cfg_kind: str, steps: int) -> str:
        if (cfg_kind, steps) not in self.refs:
            cfg = job_config(cfg_kind, steps)
            cfg["checkpoint"]["uri"] = "unused"
            out = reference_run(self.tmp / f"ref-{cfg_kind}-{steps}", cfg, 2)
            self.refs[cfg_kind, steps] = json.loads((out / "summary.json").read_text())["checksum"]
        return self.refs[cfg_kind, steps]

    def lose_node(self, node: str) -> None:
        self.b.c.stop_process_node(node, sig=signal.SIGKILL)
        self.b.nodes.remove(node)
        self.lost_nodes.append(node)
        self.b.add_node()

    def kill_operator(self) -> None:
        os.killpg(self.b.op.pid, signal.SIGKILL)
        self.b.op.wait()

    def create(self, name: str, cfg: dict) -> Path:
        out = self.tmp / name
        jdir = out / "journal"
        cfg["output"] = {"metrics_path": str(out / "metrics.jsonl"), "summary_path": str(out / "summary.json")}
        self.b.create(name, cfg, self.p["failure_policy"], extra_env={"STOKER_STEP_JOURNAL_DIR": str(jdir)})
        return jdir

    # ------------------------------------------------------------------ one job
    def run_job(self, n: int, kinds: list[str]) -> dict:
        cfg_kind = CONFIGS[n % len(CONFIGS)]
        steps = self.p["steps"] + K.extra_steps(kinds)
        ref = self.reference(cfg_kind, steps)
        name = f"chaos-{n}-{uuid.uuid4().hex[:4]}"
        jdir = self.create(name, job_config(cfg_kind, steps))
        mon = Monitor(self.b, name)
        mon.start()
        ctx = K.Ctx(rng=self.rng, job=name, replicas=2, journal_dir=jdir,
                    incarnation=lambda: int(self.b.status(name).get("incarnation", 0)),
                    finished=lambda: self.b.status(name).get("phase") in ("Succeeded", "Failed"),
                    pod_node=self.b.pod_node, lose_node=self.lose_node, kill_operator=self.kill_operator,
                    start_operator=self.b.start_operator, operator_pid=lambda: self.b.op.pid,
                    stop_s3=self.b.c.stop_s3, start_s3=self.b.c.start_s3, s3_outage_s=self.p["s3_outage_s"])
        samples: list[dict] = []
        missed: list[int] = []  # the kinds the job ended before (by index)
        try:
            for i, kind in enumerate(kinds):
                fn, expect = K.KINDS[kind]
                before = ctx.incarnation()
                try:
                    s = {"kind": kind, "expect": expect, **fn(ctx)}
                except TimeoutError as e:
                    samples.append({"kind": kind, "error": str(e), "job_ended": ctx.finished()})
                    missed += range(i, len(kinds)) if samples[-1]["job_ended"] else []
                    break
                if not s.get("hit"):
                    s["job_ended"] = ctx.finished()
                    missed += [i] if s["job_ended"] else []
                print(json.dumps({"job": name, **s}, default=str), flush=True)
                samples.append(s)
                ctx.after_t = time.time()
                ctx.after_incarnation = s.get("incarnation", before) if expect == K.RESTARTS else -1
            phase = wait_phase(self.b, name, 900)
        finally:
            K.kill_stopped(ctx.stopped)
            mon.stop()
        return {**self.check(name, cfg_kind, steps, ref, jdir, samples, phase, mon), "missed": missed}

    def run_all(self, plans: list[list[str]], report: Callable[[dict], None]) -> list[dict]:
        """The planned jobs in turn. A fault whose job ended before it could land (the
        faults before it left too few steps: a chaos run saw a launcher kill's orphaned
        trainers finish the job) moves to the next job, or to one more job, once: the
        profile counts faults injected, and a second miss stays a failure."""
        jobs: list[dict] = []
        queue, carry = list(plans), []
        while queue or carry:
            kinds = carry + (queue.pop(0) if queue else [])
            job = self.run_job(len(jobs), kinds)
            moved = [i for i in job["missed"] if i >= len(carry)]
            for i in moved:
                if i < len(job["samples"]):  # samples[i] is kinds[i]'s; the job ended before those after
                    job["samples"][i]["moved_to_next_job"] = True
            carry = [kinds[i] for i in moved]
            jobs.append(job)
            report(job)
        return jobs

    def check(self, name: str, cfg_kind: str, steps: int, ref: str, jdir: Path, samples: list[dict], phase: str,
              mon: "Monitor") -> dict:
        st = self.b.status(name)
        summary = _json(self.tmp / name / "summary.json")
        recs = journal.read(jdir)
        facts = F.recovery_facts(recs, stored=mon.stored)
        time.sleep(3)  # the pods' processes exit with them
        leftovers = K.leftover_processes(name)
        for pid in leftovers:
            F.signal_pid(pid, signal.SIGKILL)
        restarts = st.get("restarts") or {}
        incs = [i for i in st.get("incidents") or [] if i.get("kind") in ("Restart", "Replace")]
        for s, nxt in zip(samples, samples[1:] + [{}]):
            attach_latency(s, mon.incident_times, recs, until=injected_at(nxt))
        return {
            "job": name, "config": cfg_kind, "steps": steps, "phase": phase, "samples": samples, "recoveries": facts,
            "succeeded": phase == "Succeeded",
            "identical": bool(summary) and summary.get("checksum") == ref and summary.get("step") == steps,
            "newest_commit": all(f["resumed_committed"] and f["resumed"] == f["newest_commit"] for f in facts),
            "recompute_bounded": all(f["recomputed"] <= f["since_commit"] for f in facts),
            "pods_ok": not mon.duplicates and not leftovers, "duplicates": mon.duplicates, "leftovers": leftovers,
            "budget_ok": int(restarts.get("userError", 0)) == 0
            and int(restarts.get("total", 0)) == int(st.get("incarnation", 0)) == len(incs),
            "restarts": restarts, "incarnation": st.get("incarnation"),
            "incidents": [{k: i.get(k) for k in ("kind", "detectedCause", "step", "pod", "node", "time")}
                          for i in st.get("incidents") or []],
        }


class Monitor(threading.Thread):
    """Polls the job while faults are injected: when each incident appeared (wall clock),
    whether two live pods ever held one worker index, and the checkpoints committed in the
    bucket (step -> its COMMITTED marker's LastModified): the storage witness of a commit
    whose outcome a killed trainer never journalled."""

    def __init__(self, bench: Bench, name: str) -> None:
        super().__init__(daemon=True)
        self.b, self.name = bench, name
        self.incident_times: list[float] = []
        self.duplicates: list[str] = []
        self.stored: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        seen, n = 0, 0
        while not self._halt.wait(0.2):
            st = self.b.status(self.name)
            count = len([i for i in st.get("incidents") or [] if i.get("kind") in ("Restart", "Replace")])
            if count > seen:
                self.incident_times += [time.time()] * (count - seen)
                seen = count
            n += 1
            if n % 5 == 0:
                self.check_pods()
                self.check_storage()

    def check_pods(self) -> None:
        live: dict[str, list[str]] = {}
        for p in self.b.pods(self.name):
            meta, phase = p["metadata"], p.get("status", {}).get("phase")
            if meta.get("deletionTimestamp") or phase not in ("Pending", "Running"):
                continue
            live.setdefault(meta["labels"].get("stoker.dev/replica-index", "?"), []).append(meta["name"])
        self.duplicates += [",".join(v) for v in live.values() if len(v) > 1]

    def check_storage(self) -> None:
        try:
            pages = self.b.s3.get_paginator("list_objects_v2").paginate(Bucket=self.b.bucket, Prefix=f"{self.name}/")
            objs = [o for page in pages for o in page.get("Contents") or []]
        except Exception:  # noqa: BLE001 - S3 may be down on purpose (s3_outage)
            return
        for o in objs:
            parts = o["Key"].split("/")
            step = parse_step_dir(parts[1]) if len(parts) == 3 and parts[2] == COMMIT_MARKER else None
            if step is not None:
                self.stored.setdefault(step, o["LastModified"].timestamp())

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.check_storage()


def injected_at(s: dict) -> float:
    """When a sample's fault began (a during_recovery's first kill comes before its t0)."""
    times = [t for t in (s.get("t0"), (s.get("first") or {}).get("t0")) if t is not None]
    return min(times) if times else float("inf")


def attach_latency(s: dict, incident_times: list[float], recs: list[dict], until: float = float("inf")) -> None:
    """detect_s / recover_s of one fault, from incidents recorded before the next fault's
    injection (``until``): the restart a later fault caused is not this one's (a short
    run credited an S3 outage with the next fault's kill, 42 s later)."""
    t0 = s.get("t0")
    if t0 is None:
        return
    det = [t for t in incident_times if t0 <= t < until]
    s["detect_s"] = det[0] - t0 if det and (s["expect"] == K.RESTARTS or det[0] - t0 < 120) else None
    inc = s.get("incarnation", -1)
    new = [r["t"] for r in recs if r["event"] == "step" and r["incarnation"] > inc and r["t"] > t0]
    s["recover_s"] = min(new) - t0 if new and s.get("detect_s") is not None else None


def wait_phase(b: Bench, name: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < end:
        phase = b.status(name).get("phase", "")
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(0.5)
    return f"timeout ({phase})"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def plan(rng: random.Random, profile: dict) -> list[list[str]]:
    """Fault kinds per job: every kind in turn (a seeded shuffle per round), per_job a job."""
    kinds: list[str] = []
    while len(kinds) < profile["faults"]:
        rnd = list(profile["kinds"])
        rng.shuffle(rnd)
        kinds += rnd
    kinds = kinds[:profile["faults"]]
    k = profile["per_job"]
    return [kinds[i:i + k] for i in range(0, len(kinds), k)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="default")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--faults", type=int, default=None, help="override the profile's number of faults")
    ap.add_argument("--cluster-dir", default=None, help="reuse a running local cluster (stoker cluster up --dir)")
    ap.add_argument("--out", default=None, help="write the JSON here instead of bench/results/")
    args = ap.parse_args(argv)
    profile = dict(PROFILES[args.profile], **({"faults": args.faults} if args.faults else {}))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"chaos: profile {args.profile}, seed {seed} (replay: --seed {seed})", flush=True)
    rng = random.Random(seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    cluster = LocalCluster(args.cluster_dir or tmp / "cluster", die_with_parent=not args.cluster_dir)
    cluster.up()
    b = Bench(cluster, tmp)
    suite = Suite(b, rng, profile, tmp)
    jobs: list[dict] = []
    started = time.time()
    name = "chaos" if args.profile == "default" else f"chaos-{args.profile}"
    # The code the run uses is read when each process starts (trainers per job, the operator
    # after each kill): the version at the start is the run's, "machine" says the one at the end.
    results = {"profile": args.profile, "seed": seed, "command": [sys.executable, *sys.argv],
               "code_at_start": code_version(),
               "settings": {k: v for k, v in profile.items()}, "jobs": jobs}
    try:
        b.setup(nodes=2)
        jobs += suite.run_all(plan(rng, profile), lambda job: print(json.dumps(
            {k: v for k, v in job.items() if k not in ("samples", "incidents")}, default=str), flush=True))
    finally:
        b.teardown()
        cluster.delete_nodes(suite.lost_nodes)
        if not args.cluster_dir:
            cluster.down()
    rows = table(jobs)
    bad = failures(jobs)
    results.update(table=rows, failures=bad, wall_s=time.time() - started,
                   faults_injected=sum(1 for j in jobs for s in landed(j)), loadavg_end=os.getloadavg())
    print_table(f"Chaos ({args.profile}, seed {seed}, {results['faults_injected']} faults, "
                f"{len(jobs)} jobs, {results['wall_s'] / 60:.1f} min, load {os.getloadavg()[0]:.1f})", rows)
    write_results(name, results, Path(args.out) if args.out else None)
    for line in bad:
        print("FAIL", line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
