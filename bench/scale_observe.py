"""What bench_operator_scale.py observes, from real components only:

- ``PodWatch``: a watch on the namespace's pods (the apiserver's own stream), recording the
  moment each pod is first seen Running, keyed by the job label of the pod template;
- ``AuditLog``: the apiserver's audit log (an audit policy that logs the two operators' users
  at Metadata level, nothing else), read between two byte offsets: every request an operator
  made, with its verb, resource, subresource and time;
- ``apiserver_requests``: ``apiserver_request_total`` from the apiserver's /metrics (every
  client: scheduler, kwok, controller-manager, operators, the benchmark), as a cross-check.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [{users}]
- level: None
"""
STATUS_WRITE_VERBS = ("update", "patch")


def write_audit_policy(state_dir: Path, users: list[str]) -> None:
    """Before ``LocalCluster.up``: the apiserver then audits these users' requests (components.py)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "audit-policy.yaml").write_text(AUDIT_POLICY.format(users=", ".join(users)))


class PodWatch:
    """First time each pod of ``namespace`` was seen Running (monotonic), per job label."""

    def __init__(self, c: Any, namespace: str, job_label: str) -> None:
        self.c, self.ns, self.label = c, namespace, job_label
        self.running: dict[str, tuple[str, float]] = {}   # pod -> (job, first seen Running)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._rv = ""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=f"watch-{namespace}", daemon=True)

    def start(self) -> "PodWatch":
        _, lst = self.c.api("GET", f"/api/v1/namespaces/{self.ns}/pods", ok=(200,))
        self._rv = lst["metadata"]["resourceVersion"]
        for p in lst["items"]:
            self._see(p)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def count(self) -> int:
        with self._lock:
            return len(self.running)

    def per_job(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = collections.defaultdict(list)
        with self._lock:
            for job, t in self.running.values():
                out[job].append(t)
        return dict(out)

    def _see(self, pod: dict[str, Any]) -> None:
        if (pod.get("status") or {}).get("phase") != "Running":
            return
        name = pod["metadata"]["name"]
        job = (pod["metadata"].get("labels") or {}).get(self.label, "")
        with self._lock:
            self.running.setdefault(name, (job, time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            url = (f"{self.c.apiserver_url}/api/v1/namespaces/{self.ns}/pods?watch=1&timeoutSeconds=300"
                   f"&resourceVersion={self._rv}&allowWatchBookmarks=true")
            try:
                with urllib.request.urlopen(url, timeout=330, context=self.c._admin_ssl()) as r:
                    for line in r:
                        if self._stop.is_set():
                            return
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            raise RuntimeError(f"watch error: {obj.get('message')}")
                        self._rv = obj.get("metadata", {}).get("resourceVersion", self._rv)
                        if ev.get("type") in ("ADDED", "MODIFIED"):
                            self._see(obj)
            except BaseException as e:  # noqa: BLE001 - the main loop reports it
                self.error = e
                return


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


class AuditLog:
    """The apiserver's audit log (JSON lines), read from a remembered byte offset."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def events(self, start: int, end: int | None = None) -> list[dict[str, Any]]:
        """Each request once (its ResponseComplete, or ResponseStarted for a watch still open)."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        by_id: dict[str, dict[str, Any]] = {}
        for line in data.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue   # a line still being written
            if ev.get("stage") == "ResponseComplete" or ev.get("auditID") not in by_id:
                by_id[ev.get("auditID")] = ev
        return list(by_id.values())


def summarize(events: list[dict[str, Any]], user: str, t0: float, t1: float) -> dict[str, Any]:
    """``user``'s requests received in [t0, t1) (wall clock): total, status writes, and by
    verb/resource/subresource."""
    total, status_writes = 0, 0
    kinds: collections.Counter[str] = collections.Counter()
    for ev in events:
        if (ev.get("user") or {}).get("username") != user:
            continue
        t = _ts(ev["requestReceivedTimestamp"])
        if not t0 <= t < t1:
            continue
        ref = ev.get("objectRef") or {}
        total += 1
        sub = ref.get("subresource")
        kinds[f"{ev.get('verb')} {ref.get('resource', '?')}{'/' + sub if sub else ''}"] += 1
        if sub == "status" and ev.get("verb") in STATUS_WRITE_VERBS:
            status_writes += 1
    return {"requests": total, "status_writes": status_writes, "by_kind": dict(kinds.most_common())}


def apiserver_requests(c: Any) -> float:
    """Sum of apiserver_request_total over all label sets (every client)."""
    req = urllib.request.Request(c.apiserver_url + "/metrics")
    with urllib.request.urlopen(req, timeout=30, context=c._admin_ssl()) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apiserver_request_total{"))
