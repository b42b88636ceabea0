"""Builders for TrainingJob bodies and observed pods used by the unit tests."""
from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from stoker.common import labels as L
from stoker.operator.jobspec import job_view
from stoker.operator.podview import pod_view
from stoker.operator.pods import RenderConfig, render_pod, spec_hash

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
UID = "0123456789abcdef"


def job_body(name: str = "demo", replicas: int = 2, status: dict | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "stoker.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "1"},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "python:3.11",
                                                    "command": ["python", "train.py"], "args": ["--steps", "10"]}]}},
            "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 0},
            "runPolicy": {"suspend": False, "cleanPodPolicy": "Running"},
        },
        "status": status or {},
    }
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(body["spec"].get(k), dict):
            body["spec"][k] = {**body["spec"][k], **v}
        else:
            body["spec"][k] = v
    return body


def observed(body: dict[str, Any], index: int, incarnation: int = 0, phase: str = "Running", ready: bool = True,
             exit_code: int | None = None, reason: str = "", deleting: bool = False,
             disruption: str | None = None, stale_hash: bool = False, message: str = "",
             finished_at: str | None = None):
    job = job_view(body)
    pod = copy.deepcopy(render_pod(job, index, incarnation, RenderConfig()))
    st: dict[str, Any] = {"phase": phase, "conditions": []}
    if ready and phase == "Running":
        st["conditions"].append({"type": "Ready", "status": "True"})
    if disruption:
        st["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if reason:
        st["reason"] = reason
    if exit_code is not None:
        term = {"exitCode": exit_code, **({"message": message} if message else {}),
                **({"finishedAt": finished_at} if finished_at else {})}
        st["containerStatuses"] = [{"name": "trainer", "state": {"terminated": term}}]
    pod["status"] = st
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    if stale_hash:
        pod["metadata"]["annotations"][f"{L.GROUP}/spec-hash"] = "stale"
    v = pod_view(pod)
    assert v is not None
    return v


def current_hash(body: dict[str, Any]) -> str:
    return spec_hash(job_view(body))
