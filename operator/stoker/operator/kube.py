"""Thin I/O shell over the Kubernetes API (synchronous `kubernetes` client).

Every call here is idempotent from the reconciler's point of view:
AlreadyExists on create and NotFound on delete are success.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from kubernetes import client, config as kconfig
from kubernetes.client.rest import ApiException

from stoker.common import labels as L

log = logging.getLogger("stoker.operator.kube")


class Conflict(Exception):
    """The job changed since we read it (optimistic concurrency)."""


class Kube:
    def __init__(self, kubeconfig: str | None = None) -> None:
        if kubeconfig:
            kconfig.load_kube_config(config_file=kubeconfig)
        else:
            try:
                kconfig.load_incluster_config()
            except kconfig.ConfigException:
                kconfig.load_kube_config()
        api = client.ApiClient()
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.events = client.EventsV1Api(api)

    # ---- jobs
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(L.GROUP, L.VERSION, namespace, L.PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch_job_status(self, namespace: str, name: str, resource_version: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource, guarded by resourceVersion."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            return self.custom.patch_namespaced_custom_object_status(
                L.GROUP, L.VERSION, namespace, L.PLURAL, name, body)
        except ApiException as e:
            if e.status == 409:
                raise Conflict(f"{namespace}/{name} changed since read") from e
            raise

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                L.GROUP, L.VERSION, namespace, L.PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background",
                                            preconditions=client.V1Preconditions(uid=uid)))
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    # ---- pods
    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        sel = f"{L.JOB_NAME}={job_name},{L.APP_MANAGED_BY}={L.MANAGED_BY_VALUE}"
        resp = self.core.list_namespaced_pod(namespace, label_selector=sel, _preload_content=False)
        import json
        return json.loads(resp.data)["items"]

    def create_pod(self, namespace: str, pod: dict[str, Any]) -> bool:
        """True if created, False if it already existed."""
        try:
            self.core.create_namespaced_pod(namespace, pod)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    def delete_pod(self, namespace: str, name: str) -> bool:
        try:
            self.core.delete_namespaced_pod(name, namespace)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

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
            self.events.create_namespaced_event(meta["namespace"], ev)
        except ApiException as e:  # events are best effort
            log.warning("could not post event", extra={"job": meta["name"], "namespace": meta["namespace"],
                                                       "reason": reason, "error": str(e.status)})
