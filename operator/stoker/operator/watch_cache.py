"""TrainingJobs and their worker pods as the operator's watches last showed them, so that a pass
triggered by an event reads them from memory instead of the API server (a GET and a LIST per
pass were the biggest cost at scale: bench_operator_scale.py, 500 jobs).

kopf's event handlers feed it (``job_event``/``pod_event``, the raw watch objects); the shell
records its own writes (``wrote_job``, ``created_pod``, ``deleted_pod``). A read returns None
whenever memory may be behind, and the caller then asks the API server (and ``prime``s the
cache with what it read):

- a job or a job's pods never read directly since the operator started (kopf's first listing may
  still be under way, and a pod deleted before it would never send its DELETED event);
- a job's pods while one of this operator's own creates or deletes has not come back through the
  watch yet (a pass never acts twice on its own write);
- the retry after a status conflict reads directly (``fresh``), and so does a resync timer's pass when
  the job's pods were last listed directly longer ago than ``resync_fresh_seconds`` (``listed_within``):
  a missed event is repaired within that time. (Every resync pass read directly before: at 500 jobs
  those reads were most of the operator's requests, bench_operator_scale.py.)

Newer never loses to older: objects are compared by resourceVersion (etcd's revision). A job is kept
without ``metadata.managedFields`` (the server-side-apply bookkeeping: most of a job's metadata, and
nothing the operator reads); every other field is kept as the API server sent it.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable

from stoker.common import labels as L

from .podview import PodView, pod_view

Key = tuple[str, str]


UNREAD_METADATA = ("managedFields",)


def kept(obj: dict[str, Any]) -> dict[str, Any]:
    """A private copy of a job as the cache keeps it: everything but the metadata nothing reads."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in UNREAD_METADATA}
    return copy.deepcopy({**obj, "metadata": meta})


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or -1)
    except ValueError:   # resourceVersions are opaque in principle; in practice etcd revisions
        return -1


def _newer(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    return old is None or _rv(new) < 0 or _rv(old) < 0 or _rv(new) >= _rv(old)


class WatchCache:
    def __init__(self, mono: Callable[[], float] = time.monotonic) -> None:
        self.mono = mono
        self._lock = threading.Lock()
        self._jobs: dict[Key, dict[str, Any]] = {}
        # (ns, job) -> pod name -> (resourceVersion, its view): views, not bodies (a fraction of the memory)
        self._pods: dict[Key, dict[str, tuple[int, PodView | None]]] = {}
        self._listed_at: dict[Key, float] = {}                 # pods of these jobs were listed directly (mono)
        self._expect: dict[Key, set[tuple[str, str]]] = {}      # our writes not seen yet: ("add"|"del", pod)

    # ------------------------------------------------------------------ fed by the watches
    def job_event(self, type_: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            if type_ == "DELETED":
                self._forget(key)
            elif _newer(obj, self._jobs.get(key)):
                self._jobs[key] = kept(obj)

    def pod_event(self, type_: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        job = (meta.get("labels") or {}).get(L.JOB_NAME)
        if not job:
            return
        key, name, rv = (meta.get("namespace", ""), job), meta.get("name", ""), _rv(obj)
        view = None if type_ == "DELETED" else pod_view(obj)
        with self._lock:
            pods = self._pods.setdefault(key, {})
            expect = self._expect.get(key, set())
            if type_ == "DELETED":
                pods.pop(name, None)
                expect.discard(("del", name))
            elif name not in pods or rv < 0 or rv >= pods[name][0]:
                pods[name] = (rv, view)
                if meta.get("deletionTimestamp"):
                    expect.discard(("del", name))
            expect.discard(("add", name))

    # ------------------------------------------------------------------ this operator's writes
    def wrote_job(self, obj: dict[str, Any]) -> None:
        self.job_event("MODIFIED", obj)

    def created_pod(self, namespace: str, job: str, pod: str) -> None:
        with self._lock:
            if pod not in self._pods.get((namespace, job), {}):
                self._expect.setdefault((namespace, job), set()).add(("add", pod))

    def deleted_pod(self, namespace: str, job: str, pod: str) -> None:
        with self._lock:
            if pod in self._pods.get((namespace, job), {}):
                self._expect.setdefault((namespace, job), set()).add(("del", pod))

    # ------------------------------------------------------------------ reads
    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The job as last seen, or None (unknown here: read it from the API server)."""
        with self._lock:
            body = self._jobs.get((namespace, name))
            return copy.deepcopy(body) if body is not None else None

    def pods(self, namespace: str, job: str) -> list[PodView] | None:
        """The views of the job's pods, or None when memory may be behind (see the module's docstring)."""
        key = (namespace, job)
        with self._lock:
            if key not in self._listed_at or self._expect.get(key):
                return None
            return [v for _, v in self._pods.get(key, {}).values() if v is not None]

    def prime_job(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        with self._lock:
            if body is None:
                self._jobs.pop((namespace, name), None)
            elif _newer(body, self._jobs.get((namespace, name))):
                self._jobs[(namespace, name)] = kept(body)

    def prime_pods(self, namespace: str, job: str, pods: list[dict[str, Any]], list_rv: str | None) -> None:
        """A direct LIST of the job's pods (at ``list_rv``): what it shows wins unless memory saw a newer
        version of the pod; a pod only memory knows stays only if memory saw it after the LIST."""
        key = (namespace, job)
        try:
            at = int(list_rv or -1)
        except ValueError:
            at = -1
        listed = {p["metadata"]["name"]: (_rv(p), pod_view(p)) for p in pods}
        with self._lock:
            old = self._pods.get(key, {})
            merged = {n: (old[n] if n in old and old[n][0] > rv >= 0 else (rv, v)) for n, (rv, v) in listed.items()}
            merged.update({n: e for n, e in old.items() if n not in listed and at >= 0 and e[0] > at})
            self._pods[key] = merged
            self._expect.pop(key, None)
            self._listed_at[key] = self.mono()

    def listed_within(self, namespace: str, job: str, seconds: float) -> bool:
        """The job's pods were listed directly less than ``seconds`` ago."""
        with self._lock:
            at = self._listed_at.get((namespace, job))
        return at is not None and self.mono() - at < seconds

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._forget((namespace, name))

    def _forget(self, key: Key) -> None:
        self._jobs.pop(key, None)
        self._pods.pop(key, None)
        self._listed_at.pop(key, None)
        self._expect.pop(key, None)
