"""Chaos suite: many TrainingJobs, faults at random moments of real training, and for
every job the checks that matter (issue 11).

    .venv/bin/python bench/chaos.py [--profile default|memory|short] [--seed N] [--cluster-dir DIR] [--nodes real]
    make chaos          # the default profile: 100 faults across 10 kinds (goal: within an hour on 2 cores)

Jobs (2 workers each, one at a time, on a pool of 2 process nodes) cycle through three
configs of the built-in trainer: the demo model with DDP, a 2-stage 1F1B pipeline and
ZeRO-3. Each job gets a few faults (the default profile: 5, all of different kinds) drawn
from the kinds in bench/chaos_faults.py, each at a random moment of training (seeded; the
seed is printed and saved: ``--seed N`` replays the same choices). Per job it checks:

  succeeded      the job ends Succeeded
  identical      final parameters (the trainer's checksum) == an undisturbed torchrun
                 run of the same config and world size (bench/chaos_refs.py: one per
                 config, run at nice 19 beside the suite from its start, cached on disk
                 by the trainer's source)
  newest commit  every restart resumed from the newest checkpoint committed before it,
                 never from one without COMMITTED; recomputed steps (counted from the
                 append-only step journal, per generation: the processes that trained
                 together, a restart in place or a new incarnation begins one) <= steps
                 since that commit
  pods           never two live pods for one worker index, no process of the job left
                 after it ended
  budget         restarts counted as infrastructure (userError 0), total == the Restart
                 and Replace incidents recorded, incarnation == those not in place

and per fault: detect (until status.incidents records it), recover (until a step of a
newer generation is in the journal), from the moment of injection, and the incident's
cause. The default profile runs with the failure-policy defaults a user gets; the short
profile (``make test`` runs it, tests/test_chaos.py) sets progressTimeoutSeconds=5 to stay
short, and says so in its JSON. ``--nodes real``: the real-node profiles
(bench/chaos_real.py). Results: bench/results/chaos.json (raw samples, commit, machine,
load average, command line, seed, per job the times of its phases), or chaos-short.json
for the short profile. ``--profile memory``: the default profile with the in-memory tier on
(``spec.checkpoint.memoryIntervalSteps: 1``; a restore from it is judged by the tier's rule, not
the newest-commit rule: a computed step not older than the newest commit, at most one step
recomputed), written to chaos-memory.json.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import chaos_faults as K  # noqa: E402
from bench.bench_recovery import Bench  # noqa: E402
from bench.chaos_monitor import (Monitor, _json, attach_latency, cached, injected_at, pod_lister,  # noqa: E402
                                 wait_phase)
from bench.chaos_refs import NICE, References  # noqa: E402
from bench.chaos_report import failures, landed, table  # noqa: E402
from bench.common import code_version, print_table, write_results  # noqa: E402
from stoker.devcluster.local import LocalCluster  # noqa: E402
from stoker.worker import journal  # noqa: E402
from tests.recovery_tests import faults as F  # noqa: E402
from tests.recovery_tests.conftest import reference_run  # noqa: E402
from tests.recovery_tests.trainer_configs import trainer_config  # noqa: E402

# The failure-policy defaults, in-place restarts included (a crashed trainer restarts inside its pod): the
# checks follow generations (a restart in place keeps the incarnation; faults.with_generations).
PROFILES = {
    # faults: how many fault events; per_job: faults per job; kinds: drawn round-robin in a seeded order
    "default": {"faults": 100, "per_job": 5, "kinds": list(K.KINDS), "s3_outage_s": (10.0, 60.0),
                "failure_policy": {}, "steps": 240},
    "short": {"faults": 10, "per_job": 4, "kinds": list(K.KINDS), "s3_outage_s": (10.0, 12.0),
              "failure_policy": {"progressTimeoutSeconds": 5}, "steps": 200},
}
# The default profile with the in-memory tier on (a snapshot every step in each pod's memory): a
# restart in place resumes from it; the checks then ask that it resumed from a step computed before
# and not older than the newest commit, and recomputed at most memory_every steps.
PROFILES["memory"] = {**PROFILES["default"], "memory_every": 1}
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
    kinds = K.KINDS     # name -> (fault, expectation): bench/chaos_faults.py

    def __init__(self, bench: Bench, rng: random.Random, profile: dict, tmp: Path, refs: References | None) -> None:
        self.b, self.rng, self.p, self.tmp, self.refs = bench, rng, profile, tmp, refs
        self.lost_nodes: list[str] = []
        self._pods: Callable[[str], list[dict]] | None = None

    def pods(self, job: str) -> list[dict]:
        if self._pods is None:
            self._pods = pod_lister(self.b.c.kubeconfig, self.b.ns)
        return self._pods(job)

    # ------------------------------------------------------------------ plumbing
    def reference(self, cfg_kind: str, steps: int) -> str:
        """The undisturbed run's checksum (bench/chaos_refs.py; waits for it)."""
        return self.refs.checksum(f"{cfg_kind}-{steps}", reference_config(cfg_kind, steps))

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
        self.b.create(name, cfg, self.p["failure_policy"], extra_env={"STOKER_STEP_JOURNAL_DIR": str(jdir)},
                      memory_every=self.p.get("memory_every"))
        return jdir

    def make_ctx(self, name: str, jdir: Path) -> K.Ctx:
        st = cached(lambda: self.b.status(name))
        return K.Ctx(rng=self.rng, job=name, replicas=2, journal_dir=jdir,
                     incarnation=lambda: int(st().get("incarnation", 0)),
                     finished=lambda: st().get("phase") in ("Succeeded", "Failed"),
                     pod_node=self.b.pod_node, lose_node=self.lose_node, kill_operator=self.kill_operator,
                     start_operator=self.b.start_operator, operator_pid=lambda: self.b.op.pid,
                     stop_s3=self.b.c.stop_s3, start_s3=self.b.c.start_s3, s3_outage_s=self.p["s3_outage_s"])

    # ------------------------------------------------------------------ one job
    def config_of(self, n: int) -> str:
        return CONFIGS[n % len(CONFIGS)]

    def run_job(self, n: int, kinds: list[str]) -> dict:
        cfg_kind = self.config_of(n)
        steps = self.p["steps"]
        name = f"chaos-{n}-{uuid.uuid4().hex[:4]}"
        times = {"start": time.time()}
        jdir = self.create(name, job_config(cfg_kind, steps))
        mon = Monitor(self.b, name, self.pods)
        mon.start()
        ctx = self.make_ctx(name, jdir)
        try:
            samples, missed = inject_all(ctx, name, kinds, self.kinds)
            times["faults_done"] = time.time()
            phase = wait_phase(self.b, name, 900)
            times["ended"] = time.time()
        finally:
            K.kill_stopped(ctx.stopped)
            mon.stop()
        ref = self.reference(cfg_kind, steps)
        times["reference_ready"] = time.time()
        out = self.check(name, cfg_kind, steps, ref, jdir, samples, phase, mon)
        times["checked"] = time.time()
        return {**out, "missed": missed, "times": times}

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
        recs = F.with_generations(journal.read(jdir))
        facts = F.recovery_facts(recs, stored=mon.stored, key="generation")
        leftovers = settled_leftovers(name)
        for pid in leftovers:
            F.signal_pid(pid, signal.SIGKILL)
        restarts = st.get("restarts") or {}
        incs = [i for i in st.get("incidents") or [] if i.get("kind") in ("Restart", "Replace")]
        for s, nxt in zip(samples, samples[1:] + [{}]):
            attach_latency(s, mon.incident_times, recs, until=injected_at(nxt), incidents=incs)
        return {
            "job": name, "config": cfg_kind, "steps": steps, "phase": phase, "samples": samples, "recoveries": facts,
            "succeeded": phase == "Succeeded",
            "identical": bool(summary) and summary.get("checksum") == ref and summary.get("step") == steps,
            "newest_commit": all(resumed_as_it_should(f) for f in facts),
            "recompute_bounded": all(recompute_bounded(f, self.p.get("memory_every")) for f in facts),
            "pods_ok": not mon.duplicates and not leftovers, "duplicates": mon.duplicates, "leftovers": leftovers,
            "budget_ok": int(restarts.get("userError", 0)) == 0 and int(restarts.get("total", 0)) == len(incs)
            and int(st.get("incarnation", 0)) == len([i for i in incs if not i.get("inPlace")]),
            "restarts": restarts, "incarnation": st.get("incarnation"),
            "incidents": [{k: i.get(k) for k in ("kind", "inPlace", "detectedCause", "step", "pod", "node", "time")}
                          for i in st.get("incidents") or []],
        }


def resumed_as_it_should(fact: dict) -> bool:
    """From the newest commit, or from the in-memory tier at a computed step not older than it."""
    if fact["tier"] == "memory":
        return fact["memory_ok"]
    return fact["resumed_committed"] and fact["resumed"] == fact["newest_commit"]


def recompute_bounded(fact: dict, memory_every: int | None) -> bool:
    """A restore from S3 recomputes at most the steps since the commit it resumed from; one from the
    in-memory tier at most memory_every of the steps the generation before it computed."""
    if fact["tier"] == "memory":
        return fact["recomputed_last"] <= (memory_every or 0)
    return fact["recomputed"] <= fact["since_commit"]


def inject_all(ctx: K.Ctx, name: str, kinds: list[str], table: dict = K.KINDS) -> tuple[list[dict], list[int]]:
    """The job's faults in turn; returns their samples and the indexes of the kinds the
    job ended before (they move to the next job: Suite.run_all)."""
    samples: list[dict] = []
    missed: list[int] = []
    for i, kind in enumerate(kinds):
        fn, expect = table[kind]
        before = ctx.generation()
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
        restarted = expect == K.RESTARTS or (expect == K.EITHER and ctx.generation() > s.get("generation", before))
        ctx.after_generation = s.get("generation", before) if restarted else -1
    return samples, missed


def reference_config(cfg_kind: str, steps: int) -> dict:
    cfg = job_config(cfg_kind, steps)
    cfg["checkpoint"]["uri"] = "unused"
    return cfg


def settled_leftovers(job: str, within: float = 3.0) -> list[int]:
    """The job's processes still alive ``within`` seconds after it ended (the pods'
    processes exit with them; asked every 0.2 s, so a clean end costs no wait)."""
    end = time.monotonic() + within
    while (left := K.leftover_processes(job)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


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
    ap.add_argument("--nodes", choices=["process", "real"], default="process",
                    help="real: kubelet + containerd nodes, root only (bench/chaos_real.py)")
    args = ap.parse_args(argv)
    if args.nodes == "real":
        from bench import chaos_real
        return chaos_real.main(args)
    started = time.time()
    profile, seed, rng, tmp, refs = begin(args)
    cluster = LocalCluster(args.cluster_dir or tmp / "cluster", die_with_parent=not args.cluster_dir)
    cluster.up()
    # The code the run uses is read when each process starts (trainers per job, the operator
    # after each kill): the version at the start is the run's, "machine" says the one at the end.
    results = {"profile": args.profile, "seed": seed, "command": [sys.executable, *sys.argv],
               "code_at_start": code_version(), "settings": dict(profile), "jobs": [],
               "cluster_up_s": time.time() - started}
    try:
        run_suite(Suite(Bench(cluster, tmp), rng, profile, tmp, refs), plan(rng, profile), results["jobs"],
                  keep_cluster=bool(args.cluster_dir))
    finally:
        refs.close()
    return report(results, args, seed, started, refs)


def begin(args: argparse.Namespace, nodes: str = "", profiles: dict | None = None
          ) -> tuple[dict, int, random.Random, Path, References]:
    """A run's profile (of ``profiles``, default PROFILES), its seed (printed: ``--seed`` replays
    it), the seeded generator, a scratch folder and the undisturbed references of the profile's
    configs, started in the background (computed while the cluster comes up and the first jobs train)."""
    profile = dict((profiles or PROFILES)[args.profile], **({"faults": args.faults} if args.faults else {}))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    replay = f"--nodes {nodes} --seed {seed}" if nodes else f"--seed {seed}"
    print(f"chaos: {nodes + ' nodes, ' if nodes else ''}profile {args.profile}, seed {seed} (replay: {replay})",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{nodes + '-' if nodes else ''}"))
    refs = References(functools.partial(reference_run, prefix=NICE), tmp)
    for cfg_kind in profile.get("configs", CONFIGS):
        refs.want(f"{cfg_kind}-{profile['steps']}", reference_config(cfg_kind, profile["steps"]))
    return profile, seed, random.Random(seed), tmp, refs


def run_suite(suite: Suite, plans: list[list[str]], jobs: list[dict], keep_cluster: bool) -> None:
    b, cluster = suite.b, suite.b.c
    try:
        b.setup(nodes=2)
        jobs += suite.run_all(plans, lambda job: print(json.dumps(
            {k: v for k, v in job.items() if k not in ("samples", "incidents")}, default=str), flush=True))
    finally:
        b.teardown()
        cluster.delete_nodes(suite.lost_nodes)
        if not keep_cluster:
            cluster.down()


def report(results: dict, args: argparse.Namespace, seed: int, started: float, refs: References) -> int:
    """The table, the verdicts and the JSON; wall_s counts from the start (cluster up included)."""
    jobs = results["jobs"]
    rows = table(jobs)
    bad = failures(jobs)
    results.update(table=rows, failures=bad, wall_s=time.time() - started, references=refs.samples,
                   faults_injected=sum(1 for j in jobs for s in landed(j)), loadavg_end=os.getloadavg(),
                   restored_from=dict(collections.Counter(str(f["tier"]) for j in jobs for f in j["recoveries"])))
    print_table(f"Chaos ({results['profile']}, seed {seed}, {results['faults_injected']} faults, "
                f"{len(jobs)} jobs, {results['wall_s'] / 60:.1f} min, load {os.getloadavg()[0]:.1f})", rows)
    name = {"default": "chaos", "real-default": "chaos-real"}.get(results["profile"], f"chaos-{results['profile']}")
    write_results(name, results, Path(args.out) if args.out else None)
    print(f"restarts restored from: {results['restored_from']} (None: from scratch)", flush=True)
    for line in bad:
        print("FAIL", line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
