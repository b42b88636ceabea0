"""Pod helpers for the process node agent tests."""
from __future__ import annotations

import json
import time


class Pods:
    def __init__(self, cluster, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace

    def apply(self, *objs: dict) -> None:
        items = [dict(o, metadata=dict(o["metadata"], namespace=self.ns)) for o in objs]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": items}))

    def get(self, name: str) -> dict | None:
        status, pod = self.cluster.api("GET", f"/api/v1/namespaces/{self.ns}/pods/{name}", ok=(200, 404))
        return pod if status == 200 else None

    def wait(self, name: str, predicate, what: str, timeout: float = 60) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            pod = self.get(name)
            if predicate(pod):
                return pod
            if time.monotonic() > deadline:
                raise AssertionError(f"pod {self.ns}/{name}: not {what} within {timeout}s; last seen: "
                                     f"{json.dumps((pod or {}).get('status'), indent=1)}")
            time.sleep(0.2)

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict:
        return self.wait(name, lambda p: p is not None and p.get("status", {}).get("phase") in phases,
                         f"in phase {phases}", timeout)

    def log(self, node: str, pod: str, container: str = "main") -> str:
        path = self.cluster.state_dir / "nodes" / node / "pods" / f"{self.ns}_{pod}" / f"{container}.log"
        return path.read_text()


def pod_manifest(name: str, node: str, code: str, *, restart: str = "Never", env=(), **spec) -> dict:
    """A pod running ``python -c code``, scheduled (by the real scheduler) onto ``node``."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": restart,
                     "nodeSelector": {"kubernetes.io/hostname": node, "stoker.dev/process-node": "true"},
                     "containers": [{"name": "main", "image": "python:3", "command": ["python", "-c", code],
                                     "env": list(env)}], **spec}}
