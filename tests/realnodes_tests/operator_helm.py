"""Helpers for the Helm-installed operator on real nodes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from stoker.common import labels

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "stoker"

TRAINER = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(t)
print("rank", dist.get_rank(), "world", dist.get_world_size(), "sum", t.item(),
      "node", os.environ.get("NODE"), flush=True)
dist.destroy_process_group()
"""


def operator_image(cluster, log=print) -> str:
    """The operator's image, built from operator/Dockerfile (buildah) once per content, imported
    into the nodes."""
    from stoker.devcluster.local import cache_dir
    from stoker.devcluster.realnodes import dockerbuild
    ref, archive = dockerbuild.operator_image(cache_dir() / "images", log=log)
    cluster.real_nodes().import_image(archive)
    return ref


def helm_install(cluster, namespace: str, tmp: Path, node_selector: dict | None = None, log=print,
                 **extra) -> str:
    """`helm install` of the chart with the operator image built here; returns the image."""
    image_ref = operator_image(cluster, log)
    repo, tag = image_ref.rsplit(":", 1)
    values = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
              "nodeSelector": node_selector or {"stoker.dev/real-node": "true"}, **extra}
    f = tmp / "values.json"
    f.write_text(json.dumps(values))
    # --wait: the operator and the rendezvous store Deployments are ready (a job made before
    # the store is up would lose its first incarnation to an unreachable rendezvous).
    r = subprocess.run([cluster.tool("helm"), "install", "stoker", str(CHART), "-n", namespace, "--wait",
                        "--timeout", "5m", "-f", str(f), "--kubeconfig", str(cluster.kubeconfig)],
                       capture_output=True, text=True, timeout=330)
    assert r.returncode == 0, r.stderr
    return image_ref


def job(name: str, image_ref: str, cuda: tuple[dict, dict]) -> dict:
    return {
        "apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 0},
            "template": {"spec": {
                "nodeSelector": {"stoker.dev/real-node": "true"},
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {labels.JOB_NAME: name}}}]}},
                "terminationGracePeriodSeconds": 5,
                "volumes": [cuda[0]],
                "containers": [{"name": "trainer", "image": image_ref, "imagePullPolicy": "Never",
                                "command": ["python", "-c", TRAINER],
                                "volumeMounts": [cuda[1]],
                                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}],
            }},
        },
    }


def wait_phase(cluster, namespace: str, name: str, phases: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = cluster.kubectl("get", "trainingjob", name, "-n", namespace, "-o", "json", check=False)
        obj = json.loads(r.stdout) if r.returncode == 0 else {}
        if obj.get("status", {}).get("phase") in phases:
            return obj
        if time.monotonic() > deadline:
            pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
            raise AssertionError(f"TrainingJob {name} not {phases} in {timeout}s: "
                                 f"{json.dumps(obj.get('status'), indent=1)}\n{pods}")
        time.sleep(1)


# --- recovery on real nodes (test_recovery_real) ---------------------------------------

NON_ROOT = {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}
SPREAD = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
    "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchExpressions": [
        {"key": labels.JOB_NAME, "operator": "Exists"}]}}}]}}


def host_volume(name: str, path: Path, mount: str | None = None) -> tuple[dict, dict]:
    """A host folder mounted at the same path (or ``mount``) in the pod."""
    return ({"name": name, "hostPath": {"path": str(path), "type": "Directory"}},
            {"name": name, "mountPath": mount or str(path)})


def apply_config_map(cluster, namespace: str, name: str, data: dict[str, str]) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(cm))


def cuda_libs(site: str) -> tuple[dict, dict]:
    """(volume, mount) of the CUDA runtime libraries torch loads at import, from the host
    (the images leave them out: ~3 GB), into an image's site-packages ``site``."""
    from stoker.devcluster.realnodes import pyimages
    return ({"name": "cuda-libs", "hostPath": {"path": str(pyimages.site_packages() / "nvidia"), "type": "Directory"}},
            {"name": "cuda-libs", "mountPath": f"{site}/nvidia", "readOnly": True})


def _job(name: str, container: dict, volumes: list[dict], spec: dict, site: str) -> dict:
    """A 2-worker job on the real nodes, one worker per node while both are up (preferred,
    so a lost node's replacement may join the other), non-root."""
    cuda = cuda_libs(site)
    container = {**container, "volumeMounts": [*container["volumeMounts"], cuda[1]]}
    volumes = [*volumes, cuda[0]]
    return {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": 2, "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 0}, **spec,
                     "template": {"spec": {
                         "nodeSelector": {"stoker.dev/real-node": "true"}, "affinity": SPREAD,
                         "securityContext": NON_ROOT, "terminationGracePeriodSeconds": 5,
                         "volumes": volumes, "containers": [container]}}}}


def byo_job(name: str, image: str, steps: int, ckpt: Path, progress: Path) -> dict:
    """The user's own script (ConfigMap ``byo-script``) in an image without Stoker."""
    vols = [host_volume("ckpt", ckpt), host_volume("progress", progress)]
    script = ({"name": "script", "configMap": {"name": "byo-script"}}, {"name": "script", "mountPath": "/script"})
    container = {"name": "trainer", "image": image, "imagePullPolicy": "Never",
                 "command": ["python3", "/script/train.py"],
                 "env": [{"name": "STEPS", "value": str(steps)}, {"name": "CKPT_DIR", "value": str(ckpt)},
                         {"name": "PROGRESS_DIR", "value": str(progress)}, {"name": "OMP_NUM_THREADS", "value": "1"}],
                 "volumeMounts": [m for _, m in (*vols, script)]}
    from stoker.devcluster.realnodes.pyimages import TORCH_SITE
    return _job(name, container, [v for v, _ in (*vols, script)], {}, TORCH_SITE)


def byo_reference(out: Path, script: Path, steps: int) -> str:
    """The script's checksum from an undisturbed local torchrun run of the same world size."""
    (out / "ckpt").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOKER_")}
    env.update(STEPS=str(steps), CKPT_DIR=str(out / "ckpt"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=out)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split("checksum ")[1].split()[0]


def wait_progress(progress: Path, step: int, timeout: float, diag) -> None:
    """Until every rank of the script has recorded ``step``."""
    deadline = time.monotonic() + timeout
    while True:
        done = [int(f.read_text().split()[-2]) for f in progress.glob("rank*") if f.read_text().strip()]
        if len(done) == 2 and min(done) >= step:
            return
        assert time.monotonic() < deadline, f"no step {step} in {timeout}s: {done}\n{diag()}"
        time.sleep(0.02)


def s3_client(cluster):
    """A boto3 client of the cluster's MinIO, as the host sees it."""
    import boto3
    from stoker.common import env as E
    e = cluster.s3_env()
    return boto3.client("s3", endpoint_url=e[E.S3_ENDPOINT], aws_access_key_id=e[E.S3_ACCESS_KEY],
                        aws_secret_access_key=e[E.S3_SECRET_KEY], region_name=e[E.S3_REGION])


def make_bucket(cluster) -> str:
    name = f"rec-{uuid.uuid4().hex[:8]}"
    s3_client(cluster).create_bucket(Bucket=name)
    return name


CONFIG_PATH = "/etc/train/config.json"


def in_pod_config(cfg: dict) -> dict:
    return {**cfg, "output": {"metrics_path": "/tmp/out/metrics.jsonl", "summary_path": "/tmp/out/summary.json"}}


def trainer_job(name: str, image: str, bucket: str, journal: Path) -> dict:
    """The built-in trainer (config from ConfigMap ``<name>-config``), checkpoints in MinIO,
    its step journal in a host folder (the test's witness)."""
    vol, mount = host_volume("journal", journal)
    container = {"name": "trainer", "image": image, "imagePullPolicy": "Never",
                 "command": ["python", "-m", "stoker.worker.train", CONFIG_PATH],
                 "env": [{"name": "OMP_NUM_THREADS", "value": "1"},
                         {"name": "STOKER_STEP_JOURNAL_DIR", "value": str(journal)}],
                 "volumeMounts": [mount, {"name": "config", "mountPath": "/etc/train"}]}
    volumes = [vol, {"name": "config", "configMap": {"name": f"{name}-config"}}]
    from stoker.devcluster.realnodes.pyimages import SITE
    return _job(name, container, volumes, {
        "checkpoint": {"uri": f"s3://{bucket}/{name}", "intervalSteps": 5, "keep": 3,
                       "credentialsSecretRef": {"name": "stoker-s3"}}}, SITE)
