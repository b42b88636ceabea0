"""Chaos on real nodes (issue 11): ``bench/chaos.py --nodes real [--profile short|default|memory]``.

A cluster of its own (root, Linux): 2 real nodes (kubelet + containerd + kube-proxy, each
in its own network namespace: ``stoker cluster up --real-nodes 2``), the Helm-installed
operator and its rendezvous store pinned to real-node-0, and the trainers' Python image.
TrainingJobs of the built-in trainer (2 workers, spread over the nodes while both are up,
non-root) run one at a time and get the faults of bench/chaos_faults_real.py at random
moments of real training (seeded, the seed printed). Each job is checked as on process
nodes (bench/chaos.py ``Suite.check``: Succeeded, final parameters identical to an
undisturbed torchrun run of the same config, every restart from the newest commit and
never an uncommitted one, no duplicate or orphan pods, restarts on the infrastructure
budget) and each fault says what became of it (``caused``: the incident it was blamed on,
or none). The step journal and the summary are written to a host folder mounted into the
pods: the suite's witness, not something the system uses. Results:
bench/results/chaos-real.json (chaos-real-short.json, chaos-real-memory.json for the other profiles).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import chaos_faults_real as R
from bench.bench_recovery import Bench
from bench.chaos import Suite, begin, plan, report
from bench.chaos_monitor import cached
from bench.chaos_refs import References
from stoker.devcluster.local import LocalCluster
from tests.realnodes_tests import operator_helm as H

NODES = ["real-node-0", "real-node-1"]
GPUS = 2
OPERATOR_NODE = NODES[0]
PROFILES = {
    # steps: a real node's demo step takes ~0.08 s; an operator restart (~10-20 s) must not end the job
    "default": {"faults": 25, "per_job": 5, "kinds": list(R.KINDS), "cut_s": (10.0, 60.0),
                "failure_policy": {},  # the defaults: a killed trainer restarts in place
                "steps": 600, "configs": ["demo", "pipeline", "zero3"]},
    "short": {"faults": 5, "per_job": 5, "kinds": list(R.KINDS), "cut_s": (10.0, 60.0),
              "failure_policy": {},  # the defaults: a killed trainer restarts in place
              "steps": 600, "configs": ["demo"]},
}
# issue 12's fast path whole: the default profile with the in-memory tier on (a snapshot every step in each
# pod's memory and a copy on the next rank's pod); judged by the tier's rule (bench/chaos.py)
PROFILES["memory"] = {**PROFILES["default"], "memory_every": 1}


def operator_kill_last(plans: list[list[str]]) -> list[list[str]]:
    """Each job's operator kill after its other faults (their seeded order kept). The kubelet brings a
    SIGKILLed operator back after its restart back-off (10 s, doubling per kill up to 5 min): from the
    third kill on, that outlasts these 600-step jobs, which train on without the operator and end before
    their later faults can land (chaos-real-memory.json, session 24: two lost-node faults missed twice).
    The next job is created once the operator is back."""
    return [sorted(kinds, key=lambda kind: kind == "operator_killed") for kinds in plans]


def shared_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)          # the pods run as uid 10001
    return path


class RealSuite(Suite):
    kinds = R.KINDS

    def __init__(self, bench: Bench, rng: random.Random, profile: dict, tmp: Path, refs: References,
                 image: tuple[str, Path]) -> None:
        super().__init__(bench, rng, profile, tmp, refs)
        self.image, self.archive = image
        self.rn = bench.c.real_nodes()
        self.configs = tuple(profile["configs"])

    # ------------------------------------------------------------------ jobs
    def create(self, name: str, cfg: dict) -> Path:
        out = shared_dir(self.tmp / name)
        jdir = shared_dir(out / "journal")
        cfg["output"] = {"metrics_path": str(out / "metrics.jsonl"), "summary_path": str(out / "summary.json")}
        c, ns = self.b.c, self.b.ns
        H.apply_config_map(c, ns, f"{name}-config", {"config.json": json.dumps(cfg)})
        c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(self.job_body(name, out, jdir)))
        return jdir

    def job_body(self, name: str, out: Path, jdir: Path) -> dict:
        return trainer_job(self.b.bucket, self.image, name, out, jdir, self.p["failure_policy"],
                           memory_every=self.p.get("memory_every"))

    def config_of(self, n: int) -> str:
        return self.configs[n % len(self.configs)]

    # ------------------------------------------------------------------ faults
    def make_ctx(self, name: str, jdir: Path) -> R.RealCtx:
        b, st = self.b, cached(lambda: self.b.status(name))
        return R.RealCtx(rng=self.rng, job=name, replicas=2, journal_dir=jdir,
                         incarnation=lambda: int(st().get("incarnation", 0)),
                         finished=lambda: st().get("phase") in ("Succeeded", "Failed"),
                         pod_node=b.pod_node, lose_node=self.lose_node, kill_operator=None, start_operator=None,
                         operator_pid=self.operator_pid, stop_s3=None, start_s3=None, s3_outage_s=(0, 0),
                         cut_s=tuple(self.p["cut_s"]), spare_node=OPERATOR_NODE, container=self.container,
                         operator_back=self.operator_back, revive_nodes=self.revive_nodes,
                         pods_on=lambda inc: self.pods_on(name, inc))

    def pods_on(self, job: str, inc: int) -> dict[str, str]:
        return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in self.pods(job)
                if p["metadata"]["labels"].get("stoker.dev/incarnation") == str(inc)
                and not p["metadata"].get("deletionTimestamp")}

    def lose_node(self, node: str) -> None:
        self.rn.stop_node(self.rn.node(NODES.index(node)), sig=signal.SIGKILL)
        self.lost_nodes.append(node)

    def revive_nodes(self) -> float:
        """The lost nodes started again (their containerd keeps its images on disk; the
        trainers' image is imported again only if it is missing)."""
        t0 = time.monotonic()
        if self.lost_nodes:
            self.rn.up(len(NODES), gpus=GPUS)
            for name in self.lost_nodes:
                import_if_missing(self.rn.node(NODES.index(name)).containerd_sock, self.image, self.archive)
            self.lost_nodes.clear()
        return time.monotonic() - t0

    def container(self, pod: str) -> tuple[str, Path] | None:
        obj = json.loads(self.b.c.kubectl("get", "pod", pod, "-n", self.b.ns, "-o", "json", check=False).stdout
                         or "{}")
        cid = next((s.get("containerID", "") for s in obj.get("status", {}).get("containerStatuses", [])
                    if s.get("name") == "trainer"), "")
        node = obj.get("spec", {}).get("nodeName")
        if not cid.startswith("containerd://") or node not in NODES:
            return None
        return cid.split("//", 1)[1], self.rn.node(NODES.index(node)).containerd_sock

    def operator_pid(self) -> int | None:
        from tests.realnodes_tests.test_recovery_real import operator_pid
        return operator_pid(self.b.ns)

    def operator_back(self, since: float, old: int | None, timeout: float = 600) -> float | None:
        """Seconds from ``since`` until a new operator process runs (not ``old``) and its pod is Ready."""
        from tests.realnodes_tests.test_recovery_real import operator_pod, ready
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.operator_pid()
            try:
                up = ready(operator_pod(self.b.c, self.b.ns))
            except ValueError:          # none, or two while one terminates
                up = False
            if pid and pid != old and up:
                return time.time() - since
            time.sleep(0.5)
        return None


def import_if_missing(sock: Path, image: str, archive: Path) -> None:
    """Import the trainers' image into the containerd at ``sock`` unless it holds it (a node started
    again keeps its images on disk)."""
    from stoker.devcluster.realnodes import images
    have = subprocess.run(["ctr", "--address", str(sock), "--namespace", "k8s.io", "images", "ls", "-q"],
                          capture_output=True, text=True, timeout=60).stdout.split()
    if not any(ref.endswith(image.split("/", 1)[-1]) for ref in have):
        images.import_image(archive, sock)


def trainer_job(bucket: str, image: str, name: str, out: Path, jdir: Path, failure_policy: dict,
                memory_every: int | None = None) -> dict:
    """The built-in trainer (config from ConfigMap ``<name>-config``) on the real nodes, S3 checkpoints
    every 5 steps (and in memory every ``memory_every`` steps), its outputs and step journal in host
    folders mounted into the pods (the witness)."""
    from stoker.devcluster.realnodes.pyimages import SITE
    vol, mount = H.host_volume("out", out)
    container = {"name": "trainer", "image": image, "imagePullPolicy": "Never",
                 "command": ["python", "-m", "stoker.worker.train", H.CONFIG_PATH],
                 "env": [{"name": "OMP_NUM_THREADS", "value": "1"},
                         {"name": "STOKER_STEP_JOURNAL_DIR", "value": str(jdir)}],
                 "volumeMounts": [mount, {"name": "config", "mountPath": "/etc/train"}]}
    volumes = [vol, {"name": "config", "configMap": {"name": f"{name}-config"}}]
    checkpoint = {"uri": f"s3://{bucket}/{name}", "intervalSteps": 5, "credentialsSecretRef": {"name": "stoker-s3"},
                  **({"memoryIntervalSteps": memory_every} if memory_every else {})}
    body = H._job(name, container, volumes, {"checkpoint": checkpoint}, SITE)
    body["spec"]["failurePolicy"] = {"maxRestarts": 3, "backoffSeconds": 0, **failure_policy}
    return body


def pin_cluster_dns(c: LocalCluster) -> None:
    """The test bed's CoreDNS (one replica) on the node that is never lost, as the operator:
    a real cluster runs two replicas and a lost node takes one, here it would take all."""
    c.kubectl("patch", "deployment", "coredns", "-n", "kube-system", "-p", json.dumps(
        {"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": OPERATOR_NODE}}}}}))
    c.kubectl("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=180s", timeout=200)


def setup(tmp: Path, nodes: int = len(NODES)) -> tuple[LocalCluster, Bench, tuple[str, Path]]:
    """The real-node cluster (``nodes`` nodes), the trainers' image (ref, archive) imported, the chart
    (operator + store on real-node-0), a namespace with the S3 secret and a bucket."""
    from stoker.devcluster.local import cache_dir
    from stoker.devcluster.realnodes import pyimages
    c = LocalCluster(tmp / "cluster", die_with_parent=True)
    c.up(real_nodes=nodes, gpus=GPUS)
    image = pyimages.stoker_image(cache_dir() / "images", log=print)
    c.real_nodes().import_image(image[1])
    b = Bench(c, tmp)
    b.ns = f"chaos-real-{uuid.uuid4().hex[:6]}"
    c.kubectl("create", "namespace", b.ns)
    pin_cluster_dns(c)
    H.helm_install(c, b.ns, tmp, node_selector={"kubernetes.io/hostname": OPERATOR_NODE})
    c.kubectl("rollout", "status", "deployment/stoker", "-n", b.ns, "--timeout=180s", timeout=200)
    c.create_s3_secret(b.ns)
    import boto3
    e = c.s3_env()
    b.s3 = boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL_S3"], aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name=e["AWS_DEFAULT_REGION"])
    b.bucket = H.make_bucket(c)
    return c, b, image


def main(args: argparse.Namespace) -> int:
    started = time.time()
    profile, seed, rng, tmp, refs = begin(args, "real", PROFILES)
    os.chmod(tmp, 0o755)            # the pods (uid 10001) write into folders below it
    results = {"profile": f"real-{args.profile}", "nodes": "real", "seed": seed,
               "command": [sys.executable, *sys.argv], "settings": dict(profile), "jobs": []}
    from bench.common import code_version
    results["code_at_start"] = code_version()
    cluster = None
    try:
        cluster, b, image = setup(tmp)
        results["setup_s"] = time.time() - started
        suite = RealSuite(b, rng, profile, tmp, refs, image)
        results["jobs"] += suite.run_all(operator_kill_last(plan(rng, profile)), lambda job: print(json.dumps(
            {k: v for k, v in job.items() if k not in ("samples", "incidents")}, default=str), flush=True))
    finally:
        refs.close()
        if cluster is not None:
            cluster.down()
    return report(results, args, seed, started, refs)

