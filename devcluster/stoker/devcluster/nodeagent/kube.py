"""A thin JSON layer over the kubernetes client's transport (auth, TLS from the
kubeconfig) plus a list+watch ``Reflector``.

We work on plain dicts, not the generated models: cheaper on CPU, and the pure
decision functions stay easy to test with literal dicts."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable
from urllib.parse import quote

from kubernetes import config as kconfig
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("nodeagent.kube")


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Kube:
    """Requests as JSON. If the apiserver cannot be reached and the kubeconfig
    file has changed (a local control plane restarted on new ports), the
    client is rebuilt from it."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self._lock = threading.Lock()
        self._load()

    def _mtime(self) -> float:
        try:
            return os.stat(self.kubeconfig).st_mtime
        except OSError:
            return 0.0

    def _load(self) -> None:
        self.mtime = self._mtime()
        api = kconfig.new_client_from_config(config_file=self.kubeconfig)
        api.user_agent = "stoker-nodeagent"
        self.api = api

    def _reload_if_changed(self) -> None:
        with self._lock:
            if self._mtime() != self.mtime:
                log.info("kubeconfig changed; reconnecting", extra={"kubeconfig": self.kubeconfig})
                self._load()

    def request(self, method: str, path: str, *, query: dict | None = None,
                body: Any = None, content_type: str | None = None,
                timeout: float | tuple = 10, stream: bool = False):
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        api = self.api
        req = api.param_serialize(
            method=method, resource_path=path,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            resp = api.call_api(*req, _request_timeout=timeout)
        except Exception:
            self._reload_if_changed()
            raise
        if not 200 <= resp.status <= 299:
            data = resp.read()
            try:
                message = json.loads(data).get("message", "")
            except Exception:
                message = data[:200].decode("utf-8", "replace") if data else resp.reason
            raise KubeError(resp.status, message)
        if stream:
            return resp.response
        data = resp.read()
        return json.loads(data) if data else None

    # Small conveniences -------------------------------------------------
    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def get_or_none(self, path: str):
        try:
            return self.get(path)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: dict):
        return self.request("POST", path, body=body)

    def put(self, path: str, body: dict):
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: dict, kind: str = "strategic"):
        ct = {"strategic": "application/strategic-merge-patch+json",
              "merge": "application/merge-patch+json"}[kind]
        return self.request("PATCH", path, body=body, content_type=ct)

    def delete(self, path: str, body: dict | None = None):
        return self.request("DELETE", path, body=body)


def pod_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}"


class Reflector(threading.Thread):
    """List, then watch from the list's resourceVersion; on 410 Gone or any
    error relist (with a capped backoff so a dead apiserver is no busy loop).

    ``on_sync(items)`` gets every full list (the callee diffs against what it
    knows, which also covers deletions missed while disconnected);
    ``on_event(type, obj)`` gets ADDED / MODIFIED / DELETED."""

    def __init__(self, kube: Kube, path: str, *, query: dict | None = None,
                 on_sync: Callable[[list[dict]], None],
                 on_event: Callable[[str, dict], None],
                 stop: threading.Event, name: str) -> None:
        super().__init__(name=f"reflector-{name}", daemon=True)
        self.kube, self.path, self.query = kube, path, dict(query or {})
        self.on_sync, self.on_event, self.stop_event = on_sync, on_event, stop
        self.synced = threading.Event()

    def run(self) -> None:
        backoff = 0.5
        while not self.stop_event.is_set():
            try:
                listing = self.kube.get(self.path, query=self.query, timeout=30)
                rv = listing["metadata"]["resourceVersion"]
                self.on_sync(listing.get("items") or [])
                self.synced.set()
                backoff = 0.5
                while rv and not self.stop_event.is_set():
                    rv = self._watch(rv)
                    self.stop_event.wait(0.1)  # never a hot loop, even if the server ends watches at once
            except Exception as e:  # noqa: BLE001 - any failure: relist later
                if self.stop_event.is_set():
                    return
                log.warning("list/watch failed; will relist",
                            extra={"path": self.path, "error": str(e)[:300],
                                   "retry_s": backoff})
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _watch(self, rv: str) -> str | None:
        """One watch request; returns the resourceVersion to resume from, or
        None when a relist is needed."""
        query = dict(self.query, watch="true", resourceVersion=rv,
                     allowWatchBookmarks="true", timeoutSeconds=str(240))
        resp = self.kube.request("GET", self.path, query=query, stream=True,
                                 timeout=(10, 300))
        try:
            for line in iter_resp_lines(resp):
                if self.stop_event.is_set():
                    return None
                if not line:
                    continue
                ev = json.loads(line)
                typ, obj = ev.get("type"), ev.get("object") or {}
                if typ == "ERROR":
                    log.info("watch expired; relisting",
                             extra={"path": self.path, "code": obj.get("code")})
                    return None
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = new_rv
                if typ == "BOOKMARK":
                    continue
                self.on_event(typ, obj)
        finally:
            resp.release_conn()
        return rv
