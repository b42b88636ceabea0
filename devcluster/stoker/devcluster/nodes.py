"""Nodes of a LocalCluster: kwok nodes (simulated, GPU capacity) and process nodes (the
node agent runs their pods as local processes)."""
from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from stoker.devcluster.clusterdefs import DEFAULT_GPU_PRODUCT, GPU_COUNT_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE, KWOK_ANNOTATION, ZONE_LABEL
from stoker.devcluster.procs import (ClusterError, descendants, owned_alive, read_pid, spawn, stop_group,
                                    wait_ready)


def kwok_node_manifest(
    name: str,
    *,
    gpus: int,
    gpu_product: str = DEFAULT_GPU_PRODUCT,
    zone: str | None = None,
    labels: dict[str, str] | None = None,
    taints: Iterable[dict] = (),
) -> dict:
    """A Node object kwok will manage, with ``gpus`` × nvidia.com/gpu."""
    all_labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
        # kwok manages nodes with this label AND annotation; removing the label (a
        # server-side watch selector) makes kwok let go of the node: see lose_kwok_node.
        KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1],
    }
    if gpus:
        all_labels[GPU_PRODUCT_LABEL] = gpu_product
        all_labels[GPU_COUNT_LABEL] = str(gpus)
    if zone:
        all_labels[ZONE_LABEL] = zone
    all_labels.update(labels or {})
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": list(taints)},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


class Nodes:
    """Mixin of LocalCluster: kwok and process nodes."""

    def add_kwok_nodes(
        self,
        n: int,
        *,
        gpus: int = 8,
        labels: dict[str, str] | None = None,
        taints: Iterable[dict] = (),
        prefix: str = "kwok-node",
        gpu_product: str = DEFAULT_GPU_PRODUCT,
        zones: Iterable[str] = ("zone-a", "zone-b"),
        start: int = 0,
    ) -> list[str]:
        """Create ``n`` kwok-managed Nodes ``<prefix>-<i>``, zones assigned round-robin.
        Existing nodes of the same name are kept. Returns the names."""
        zones = list(zones)
        names = []
        for i in range(start, start + n):
            name = f"{prefix}-{i}"
            zone = zones[i % len(zones)] if zones else None
            body = kwok_node_manifest(name, gpus=gpus, gpu_product=gpu_product, zone=zone,
                                      labels=labels, taints=taints)
            status, payload = self.api("POST", "/api/v1/nodes", body, ok=(201, 409))
            names.append(name)
        if names:
            self.log(f"[cluster] kwok nodes {names[0]}..{names[-1]} ({gpus} GPUs each)")
        return names

    def lose_kwok_node(self, name: str) -> None:
        """Simulate losing a kwok node: kwok stops renewing its lease and status (its
        pods stay as they are), so the controller-manager marks it Unknown after
        NODE_MONITOR_GRACE_PERIOD and taints it unreachable."""
        patch = {"metadata": {"labels": {KWOK_ANNOTATION[0]: None}}}
        data = json.dumps(patch).encode()
        req = urllib.request.Request(f"{self.apiserver_url}/api/v1/nodes/{name}", data=data,
                                     method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json"})
        with urllib.request.urlopen(req, timeout=30, context=self._admin_ssl()):
            pass

    def delete_nodes(self, names: Iterable[str]) -> None:
        for name in names:
            self.api("DELETE", f"/api/v1/nodes/{name}", ok=(200, 202, 404))

    # --------------------------------------------------------------------- S3

    def _node_pidfile(self, name: str) -> Path:
        return self.run_dir / "nodes" / f"{name}.pid"

    def _node_pid(self, name: str) -> int | None:
        pid = read_pid(self._node_pidfile(name))
        return pid if pid and owned_alive(pid, self.marker) else None

    def process_nodes(self, include_dead: bool = False) -> list[str]:
        d = self.run_dir / "nodes"
        names = sorted(p.stem for p in d.glob("*.pid")) if d.exists() else []
        return names if include_dead else [n for n in names if self._node_pid(n)]

    def start_process_node(
        self,
        name: str,
        *,
        gpus: int = 8,
        labels: dict[str, str] | None = None,
        gpu_product: str = DEFAULT_GPU_PRODUCT,
        zone: str | None = "zone-a",
        extra_args: Iterable[str] = (),
        wait: bool = True,
        timeout: float = 60,
    ) -> int:
        """Spawn the node agent (stoker.devcluster.nodeagent) for Node ``name``, labelled like a
        kwok node (GPU product/count, zone; ``labels`` override); by default wait
        until the Node reports Ready. Returns the agent's pid (its process group)."""
        node_labels = {ZONE_LABEL: zone} if zone else {}
        if gpus:
            node_labels.update({GPU_PRODUCT_LABEL: gpu_product, GPU_COUNT_LABEL: str(gpus)})
        node_labels.update(labels or {})
        if self._node_pid(name):
            raise ClusterError(f"process node {name} is already running (pid {self._node_pid(name)})")
        node_dir = self.state_dir / "nodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "stoker.devcluster.nodeagent", "--kubeconfig", str(self.kubeconfig),
                "--node", name, "--gpus", str(gpus)]
        for k, v in node_labels.items():
            argv += ["--label", f"{k}={v}"]
        argv += ["--state-dir", str(node_dir), "--kubelet-client-ca", str(self.pki_dir / "ca.crt"), *extra_args]
        env = dict(os.environ)
        logfile = self.logfile(f"node-{name}")
        proc = spawn(argv, logfile=logfile, pidfile=self._node_pidfile(name), env=env,
                     cwd=node_dir, die_with_parent=self.die_with_parent)
        self.log(f"[cluster] started process node {name} (pid {proc.pid}, {gpus} GPUs)")
        if wait:
            def ready() -> bool:
                status, node = self.api("GET", f"/api/v1/nodes/{name}", ok=None)
                conds = node.get("status", {}).get("conditions", []) if status == 200 else []
                return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            took = wait_ready(f"process node {name}", ready, proc=proc, logfile=logfile,
                              timeout=timeout)
            self.log(f"[cluster] process node {name} Ready ({took:.1f}s)")
        return proc.pid

    def node_processes(self, name: str) -> list[int]:
        """A running process node's agent and every process under it (its pods' launchers and
        trainers, also those in sessions of their own); [] if it is not running."""
        pid = self._node_pid(name)
        return [pid, *descendants(pid)] if pid else []

    def stop_process_node(self, name: str, sig: int = signal.SIGTERM, grace: float = 10) -> bool:
        """Signal the agent's whole process group (SIGTERM or SIGKILL simulates losing
        the node); SIGKILL after ``grace``. Returns True if it was running. SIGKILL also
        kills, at the same moment, every process under the agent that left its group (torchrun
        starts its workers in sessions of their own): a lost machine takes them all at once,
        where they used to train on for seconds after their agent and launcher were gone."""
        pid = read_pid(self._node_pidfile(name))
        doomed = self.node_processes(name)[1:] if sig == signal.SIGKILL else []
        was = bool(pid) and stop_group(pid, self.marker, sig=sig, grace=grace)
        for child in doomed:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._node_pidfile(name).unlink(missing_ok=True)
        if was:
            self.log(f"[cluster] stopped process node {name} ({signal.Signals(sig).name})")
        return was

    # ---------------------------------------------------------------- context
