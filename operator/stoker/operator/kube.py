"""Thin I/O shell over the Kubernetes REST API.

Requests go through `kubernetes.client.ApiClient.call_api` with plain JSON: the
generated client's models would re-validate pod specs client-side (and reject
valid ones, e.g. integer resource quantities the API server accepts), and the
user's pod template must reach the API server exactly as written.

Every call is idempotent from the reconciler's point of view:
AlreadyExists on create and NotFound on delete are success.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config as kconfig

from stoker.common import labels as L

log = logging.getLogger("stoker.operator.kube")



def authorization_header(cfg: Any) -> str | None:
    """The `Authorization` header value of a kubernetes-client Configuration, if it uses a
    token. Older clients keep it under api_key['authorization'] ('Bearer …'); kubernetes>=36
    keeps a kubeconfig or in-cluster ServiceAccount token under api_key['BearerToken'] with
    the prefix in api_key_prefix (in-cluster it is re-read through refresh_api_key_hook)."""
    for key in ("authorization", "BearerToken"):
        value = cfg.get_api_key_with_prefix(key)
        if value:
            return value if " " in value else f"Bearer {value}"
    return None

class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = str(message)


class Conflict(KubeError):
    """The job changed since we read it (optimistic concurrency)."""


def _job_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{L.GROUP}/{L.VERSION}/namespaces/{quote(namespace)}/{L.PLURAL}"
    return f"{base}/{quote(name)}" if name else base


def _workload_path(namespace: str, name: str = "") -> str:
    base = f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{quote(namespace)}/workloads"
    return f"{base}/{quote(name)}" if name else base


class KubeApi:
    """Every call the operator makes, by name; ``request`` is the one transport
    (``Kube``: the API server; unit tests: a recording stand-in). No other module
    builds an API path."""

    def request(self, method: str, path: str, body: Any = None, *, query: dict | None = None,
                content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202)) -> tuple[int, dict]:
        raise NotImplementedError

    # ---- jobs
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = self.request("GET", _job_path(namespace, name), ok=(200, 404))
        return body if status == 200 else None

    def patch_job_status(self, namespace: str, name: str, resource_version: str, status: dict[str, Any]) -> dict:
        """Merge-patch the status subresource, guarded by resourceVersion (409 -> Conflict)."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        return self.request("PATCH", _job_path(namespace, name) + "/status", body,
                            content_type="application/merge-patch+json")[1]

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                "preconditions": {"uid": uid}}
        self.request("DELETE", _job_path(namespace, name), body, ok=(200, 202, 404, 409))

    # ---- pods
    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        return self.list_pods_at(namespace, job_name)[0]

    def list_pods_at(self, namespace: str, job_name: str) -> tuple[list[dict[str, Any]], str | None]:
        """The job's pods and the list's resourceVersion (what the watch cache merges against)."""
        sel = f"{L.JOB_NAME}={job_name},{L.APP_MANAGED_BY}={L.MANAGED_BY_VALUE}"
        body = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query={"labelSelector": sel})[1]
        return body.get("items", []), (body.get("metadata") or {}).get("resourceVersion")

    def create_pod(self, namespace: str, pod: dict[str, Any]) -> bool:
        """True if created, False if it already existed."""
        try:
            self.request("POST", f"/api/v1/namespaces/{quote(namespace)}/pods", pod)
            return True
        except Conflict:
            return False

    def delete_pod(self, namespace: str, name: str, grace_s: int | None = None) -> bool:
        """`grace_s`: DeleteOptions.gracePeriodSeconds (None: the pod's terminationGracePeriodSeconds)."""
        body = None if grace_s is None else {"kind": "DeleteOptions", "apiVersion": "v1",
                                             "gracePeriodSeconds": int(grace_s)}
        status, _ = self.request("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}", body,
                                 ok=(200, 202, 404))
        return status != 404

    # ---- nodes
    def list_nodes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/nodes")[1].get("items") or []

    def get_node(self, name: str) -> dict[str, Any] | None:
        status, body = self.request("GET", f"/api/v1/nodes/{quote(name)}", ok=(200, 404))
        return body if status == 200 else None

    def get_peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """The kopf peering object (KopfPeering in ``namespace``, else ClusterKopfPeering)."""
        path = (f"/apis/kopf.dev/v1/namespaces/{quote(namespace)}/kopfpeerings/{quote(name)}" if namespace
                else f"/apis/kopf.dev/v1/clusterkopfpeerings/{quote(name)}")
        status, body = self.request("GET", path, ok=(200, 404))
        return body if status == 200 else None

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.request("PATCH", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}",
                     {"metadata": {"labels": dict(labels)}}, content_type="application/merge-patch+json")

    def cordon_node(self, name: str) -> None:
        self.request("PATCH", f"/api/v1/nodes/{quote(name)}", {"spec": {"unschedulable": True}},
                     content_type="application/merge-patch+json")

    # ---- job metadata
    def annotate_job(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self.request("PATCH", _job_path(namespace, name), {"metadata": {"annotations": dict(annotations)}},
                     content_type="application/merge-patch+json")

    # ---- secrets (the per-job heartbeat token: get and create only)
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}",
                                    ok=(200, 404))
        return body if status == 200 else None

    def create_secret(self, namespace: str, secret: dict[str, Any]) -> bool:
        """True if created, False if it already existed."""
        status, _ = self.request("POST", f"/api/v1/namespaces/{quote(namespace)}/secrets", secret,
                                 ok=(200, 201, 409))
        return status != 409

    # ---- Kueue (a queued job's Workload, kueue_shell.py)
    def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = self.request("GET", _workload_path(namespace, name), ok=(200, 404))
        return body if status == 200 else None

    def create_workload(self, namespace: str, workload: dict[str, Any]) -> bool:
        """True if created, False if it already existed."""
        status, _ = self.request("POST", _workload_path(namespace), workload, ok=(200, 201, 409))
        return status != 409

    def patch_workload(self, namespace: str, name: str, patch: dict[str, Any], *, status: bool = False) -> None:
        """Merge-patch the Workload (``status``: its status subresource; a resourceVersion in the patch
        guards it, 409 -> Conflict)."""
        self.request("PATCH", _workload_path(namespace, name) + ("/status" if status else ""), patch,
                     content_type="application/merge-patch+json")

    def delete_workload(self, namespace: str, name: str) -> None:
        self.request("DELETE", _workload_path(namespace, name), ok=(200, 202, 404))

    def priority_value(self, group: str, kind: str, name: str) -> int | None:
        """The value of a PriorityClass or a Kueue WorkloadPriorityClass (None: not found)."""
        plural = "priorityclasses" if kind == "PriorityClass" else "workloadpriorityclasses"
        version = "v1" if group == "scheduling.k8s.io" else "v1beta2"
        status, body = self.request("GET", f"/apis/{group}/{version}/{plural}/{quote(name)}", ok=(200, 404))
        return int(body.get("value", 0)) if status == 200 else None

    # ---- kopf peering
    def ensure_peering(self, name: str, namespaces: list[str]) -> None:
        """kopf only patches the peering object: create it (crds/kopf-peering.yaml) if missing."""
        if not namespaces:
            self.request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
                         {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}},
                         ok=(201, 409))
        for ns in namespaces:
            self.request("POST", f"/apis/kopf.dev/v1/namespaces/{quote(ns)}/kopfpeerings",
                         {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name}},
                         ok=(201, 409))

    # ---- events (events.k8s.io/v1; `kubectl describe` shows them)
    def emit_event(self, job: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = job["metadata"]
        now = dt.datetime.now(dt.timezone.utc)
        ev = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": "stoker.dev/operator",
            "reportingInstance": "stoker-operator",
            "action": reason,
            "reason": reason,
            "note": message[:1024],
            "type": type_,
            "regarding": {
                "apiVersion": f"{L.GROUP}/{L.VERSION}",
                "kind": L.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
        }
        try:
            self.request("POST", f"/apis/events.k8s.io/v1/namespaces/{quote(meta['namespace'])}/events", ev)
        except KubeError as e:  # events are best effort
            log.warning("could not post event", extra={"job": meta["name"], "namespace": meta["namespace"],
                                                       "reason": reason, "error": str(e)})


class Kube(KubeApi):
    def __init__(self, kubeconfig: str | None = None) -> None:
        cfg = client.Configuration()
        if kubeconfig:
            kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            try:
                kconfig.load_incluster_config(client_configuration=cfg)
            except kconfig.ConfigException:
                kconfig.load_kube_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.cfg = cfg
        self.api = client.ApiClient(cfg)

    def request(self, method: str, path: str, body: Any = None, *, query: dict | None = None,
                content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202)) -> tuple[int, dict]:
        url = self.cfg.host + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        auth = authorization_header(self.cfg)
        if auth:
            headers["Authorization"] = auth
        resp = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
        raw = resp.read()
        payload = json.loads(raw) if raw else {}
        if resp.status not in ok:
            msg = payload.get("message", raw[:300])
            if resp.status == 409:
                raise Conflict(resp.status, msg)
            raise KubeError(resp.status, msg)
        return resp.status, payload
