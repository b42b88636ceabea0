"""The Node object and its liveness signals: the Ready condition (NodeStatus
updates) and the Lease in kube-node-lease. The node lifecycle controller in
kube-controller-manager marks the node NotReady/Unknown when both go stale,
which is exactly what happens when the agent is stopped."""
from __future__ import annotations

import logging
import os
import platform
import threading
import time
from datetime import datetime, timezone

from . import __version__
from .kube import Kube, KubeError
from .podstatus import now_rfc3339

log = logging.getLogger("nodeagent.node")

LEASE_NS = "kube-node-lease"
PROCESS_NODE_LABEL = "stoker.dev/process-node"


def node_labels(name: str, extra: dict[str, str]) -> dict[str, str]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
        PROCESS_NODE_LABEL: "true",
    }
    labels.update(extra)
    return labels


def capacity(cpu: str, memory: str, pods: str, gpus: int) -> dict[str, str]:
    cap = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi"}
    if gpus:
        cap["nvidia.com/gpu"] = str(gpus)
    return cap


def _conditions(ready: bool) -> list[dict]:
    now = now_rfc3339()
    conds = []
    for typ, reason in (("MemoryPressure", "KubeletHasSufficientMemory"),
                        ("DiskPressure", "KubeletHasNoDiskPressure"),
                        ("PIDPressure", "KubeletHasSufficientPID")):
        conds.append({"type": typ, "status": "False", "reason": reason,
                      "message": "process node agent", "lastHeartbeatTime": now,
                      "lastTransitionTime": now})
    conds.append({"type": "Ready", "status": "True" if ready else "False",
                  "reason": "KubeletReady" if ready else "KubeletNotReady",
                  "message": "stoker process node agent is posting ready status",
                  "lastHeartbeatTime": now, "lastTransitionTime": now})
    return conds


def node_status(*, name: str, ip: str, cap: dict[str, str], previous: dict | None = None,
                kubelet_port: int = 0) -> dict:
    """Status for a node that is up. Transition times of unchanged conditions are
    kept from ``previous`` (the node's current status)."""
    prev = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    conds = _conditions(True)
    for c in conds:
        p = prev.get(c["type"])
        if p and p.get("status") == c["status"] and p.get("lastTransitionTime"):
            c["lastTransitionTime"] = p["lastTransitionTime"]
    return {
        "capacity": cap,
        "allocatable": dict(cap),
        "conditions": conds,
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": platform.release(), "osImage": "stoker process node",
            "containerRuntimeVersion": f"process://{__version__}",
            "kubeletVersion": f"v0.0.0-stoker-nodeagent-{__version__}", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": node_labels(name, {})["kubernetes.io/arch"],
        },
    }


def register(kube: Kube, *, name: str, labels: dict[str, str]) -> dict:
    """Create the Node, or adopt an existing one with this name (labels merged)."""
    path = f"/api/v1/nodes/{name}"
    try:
        node = kube.create("/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels}, "spec": {}})
        log.info("registered node", extra={"node_name": name})
    except KubeError as e:
        if e.status != 409:
            raise
        node = kube.patch(path, {"metadata": {"labels": labels}})
        log.info("adopted existing node", extra={"node_name": name})
    return node


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Heartbeat(threading.Thread):
    """Renews the Lease every ``lease_interval`` seconds and posts NodeStatus
    every ``status_interval`` seconds. Stops (without marking anything) when
    ``stop`` is set."""

    def __init__(self, kube: Kube, *, name: str, ip: str, cap: dict[str, str],
                 node_uid: str, stop: threading.Event, lease_interval: float = 2.0,
                 status_interval: float = 10.0, lease_duration: int = 40, kubelet_port: int = 0) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.kube, self.name, self.ip, self.cap = kube, name, ip, cap
        self.node_uid, self.stop_event = node_uid, stop
        self.lease_interval, self.status_interval = lease_interval, status_interval
        self.lease_duration = lease_duration
        self.kubelet_port = kubelet_port
        self._last_status = 0.0
        self._previous: dict | None = None

    def post_status(self) -> None:
        status = node_status(name=self.name, ip=self.ip, cap=self.cap, previous=self._previous,
                             kubelet_port=self.kubelet_port)
        node = self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": status})
        self._previous = node.get("status")
        self._last_status = time.monotonic()

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": self.lease_duration,
                "renewTime": _micro_time()}
        try:
            self.kube.patch(path, {"spec": spec}, kind="merge")
        except KubeError as e:
            if e.status != 404:
                raise
            self.kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": LEASE_NS, "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.node_uid}]},
                "spec": spec})

    def run(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                self.renew_lease()
                if time.monotonic() - self._last_status >= self.status_interval:
                    self.post_status()
                if failures:
                    log.info("heartbeat recovered", extra={"after_failures": failures})
                failures = 0
            except Exception as e:  # noqa: BLE001 - keep beating
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("heartbeat failed", extra={"error": str(e)[:300], "failures": failures})
            self.stop_event.wait(self.lease_interval)


