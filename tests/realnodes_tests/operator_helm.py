"""Helpers for the Helm-installed operator on real nodes."""
from __future__ import annotations

import json
import subprocess
import time
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


def helm_install(cluster, namespace: str, image_ref: str, tmp: Path, cuda: tuple[dict, dict]) -> None:
    repo, tag = image_ref.rsplit(":", 1)
    values = {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
              "nodeSelector": {"stoker.dev/real-node": "true"},
              "extraVolumes": [cuda[0]], "extraVolumeMounts": [cuda[1]]}
    f = tmp / "values.json"
    f.write_text(json.dumps(values))
    r = subprocess.run([cluster.tool("helm"), "install", "stoker", str(CHART), "-n", namespace,
                        "-f", str(f), "--kubeconfig", str(cluster.kubeconfig)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


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
