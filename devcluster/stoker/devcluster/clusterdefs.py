"""The local cluster's fixed settings: where its tools come from, its network ranges,
node labels and timings (test settings, see NODE_MONITOR_*)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-tools.sh"

# Test setting: a node whose heartbeats stop is marked NotReady/Unknown after
# NODE_MONITOR_GRACE_PERIOD (Kubernetes' default is 50s). kwok renews node leases
# every KWOK_NODE_LEASE_SECONDS/4 seconds, well inside the grace period; a process
# node agent must heartbeat at least as often.
NODE_MONITOR_PERIOD = "2s"
NODE_MONITOR_GRACE_PERIOD = "10s"
KWOK_NODE_LEASE_SECONDS = 8

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"          # the `kubernetes` Service, in the apiserver cert
KWOK_POD_CIDR = "10.0.0.1/16"     # pod IPs kwok hands out
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
S3_REGION = "us-east-1"

KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"

# Start order; `down` stops in reverse.
COMPONENTS = ["etcd", "minio", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
K8S_COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
PORT_NAMES = ["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "minio"]
TIMEOUTS = {"etcd": 30, "kube-apiserver": 90, "minio": 60}


def cache_dir() -> Path:
    return Path(os.environ.get("STOKER_CACHE") or Path.home() / ".cache" / "stoker")


def default_state_dir() -> Path:
    return Path(os.environ.get("STOKER_HOME") or Path.home() / ".stoker" / "cluster")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
