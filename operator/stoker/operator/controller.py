"""The reconcile shell: read → plan (pure) → act → write status once → Events.

`Controller.trigger(ns, name)` is called from kopf handlers (job events, pod
events, the resync timer). Passes for one job never overlap: a trigger that
arrives while a pass runs marks the job dirty and the running pass repeats once.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any, Callable

from . import job_metrics, metrics, refusals, waiting
from .jobspec import job_view
from .kube import Conflict, Kube, KubeError
from .kueue_shell import KueueShell
from .pods import RenderConfig, render_pod
from .podview import pod_view
from .preflight_shell import Preflight
from .reconcile import Event, Plan, plan
from .recovery_shell import RecoveryShell
from .soon import Soon
from .status import with_observed_generation, write_due
from .watch_cache import WatchCache

log = logging.getLogger("stoker.operator")


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch turning `old` into `new` (removed keys -> None)."""
    out = {k: v for k, v in new.items() if old.get(k) != v}
    for k in old:
        if k not in new:
            out[k] = None
    return out


def _uncount(pl: Plan, not_created: int) -> None:
    """status.replicas counted the plan's creates; take back those that did not happen."""
    pl.status["replicas"] = max(0, int(pl.status.get("replicas", 0)) - not_created)


class Controller:
    def __init__(self, kube: Kube, render: RenderConfig,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
                 requeue_horizon_s: float = 0.0,
                 recovery: RecoveryShell | None = None, status_heartbeat_interval_s: float = 0.0,
                 mono: Callable[[], float] = time.monotonic, cache: WatchCache | None = None,
                 pass_workers: int = 8, resync_fresh_s: float = 0.0) -> None:
        self.kube = kube
        # The watches' view of jobs and pods (watch_cache.py); None: every pass reads the API server.
        self.cache = cache
        self.recovery = recovery or RecoveryShell(kube, watch_nodes=False)
        self.render = render
        self.preflight = Preflight(kube, render.s3_endpoint)
        self.kueue = KueueShell(kube)
        self.clock = clock
        # Plans that ask to be looked at again within this horizon get a one-shot
        # delayed pass (the step after a restart decision, a backoff or deadline
        # ending soon); later ones are left to the resync timer.
        self.requeue_horizon_s = requeue_horizon_s
        # A resync pass reads the API server when the job's pods were listed directly longer ago than this.
        self.resync_fresh_s = resync_fresh_s
        # Heartbeat-refreshed status fields are written at most this often per job (status.write_due).
        self.status_heartbeat_interval_s = status_heartbeat_interval_s
        self.mono = mono
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._fresh: set[tuple[str, str]] = set()   # a pending repeat must read the API server
        self._soon = Soon(pass_workers)               # trigger_soon's passes: a bounded pool, not a thread each
        self._pending: set[tuple[str, str]] = set()
        self._written: dict[tuple[str, str], str] = {}  # resourceVersion of our last status write
        self._written_at: dict[tuple[str, str], float] = {}  # and when (self.mono)

    def is_own_write(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """True for the watch event of our own last status write: nothing new to see."""
        return resource_version is not None and self._written.get((namespace, name)) == resource_version

    def forget(self, namespace: str, name: str) -> None:
        self._written.pop((namespace, name), None)
        self._written_at.pop((namespace, name), None)
        if self.cache is not None:
            self.cache.forget(namespace, name)
        self.recovery.forget(namespace, name)

    # ------------------------------------------------------------------ coalescing trigger
    def resync(self, namespace: str, name: str) -> None:
        """The resync timer's pass (on the pass pool): time-driven transitions, and a direct read of the
        job and its pods when the last one is older than ``resync_fresh_s`` (the safety net for a missed
        watch event)."""
        fresh = self.cache is None or not self.cache.listed_within(namespace, name, self.resync_fresh_s)
        self.trigger_soon(namespace, name, 0.0, fresh=fresh)

    def trigger_soon(self, namespace: str, name: str, delay: float = 0.25, fresh: bool = False) -> None:
        """Run a pass after `delay` on the pass pool; triggers for the same job meanwhile fold into it.
        Pod events come in bursts (one per pod and phase), this makes them one pass. ``fresh``: the
        pass reads the API server (see ``trigger``)."""
        key = (namespace, name)
        with self._lock:
            if fresh:
                self._fresh.add(key)
            if key in self._pending:
                return
            self._pending.add(key)

        def fire() -> None:
            with self._lock:
                self._pending.discard(key)
            try:
                self.trigger(namespace, name)
            except Exception:  # logged in reconcile_once; the resync timer retries
                pass

        self._soon.call_later(delay, fire)

    def trigger(self, namespace: str, name: str, fresh: bool = False) -> Plan | None:
        """A pass for the job (repeated once if triggered again meanwhile). ``fresh``: read the job and
        its pods from the API server, not from the watch cache (the resync timer's safety net)."""
        key = (namespace, name)
        with self._lock:
            if fresh:
                self._fresh.add(key)
            if key in self._running:
                self._dirty.add(key)
                return None
            self._running.add(key)
        result = None
        try:
            for _ in range(10):  # bounded: a hot loop is a bug, the timer retries anyway
                with self._lock:
                    self._dirty.discard(key)
                    fresh = key in self._fresh
                    self._fresh.discard(key)
                result = self.reconcile_once(namespace, name, fresh)
                with self._lock:
                    if key not in self._dirty:
                        break
        finally:
            with self._lock:
                self._running.discard(key)
                self._dirty.discard(key)
        return result

    # ------------------------------------------------------------------ one pass
    def reconcile_once(self, namespace: str, name: str, fresh: bool = False) -> Plan | None:
        t0 = time.perf_counter()
        fields = {"job": name, "namespace": namespace}
        try:
            for attempt in range(3):
                try:   # after a conflict the job is re-read from the API server
                    return self._pass(namespace, name, fields, fresh or attempt > 0)
                except Conflict:
                    log.debug("status conflict, re-reading", extra={**fields, "attempt": attempt})
            return None
        except Exception as exc:
            metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
            log.exception("reconcile failed", extra=fields)
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - t0)

    def _preflight(self, job, pl: Plan, now: dt.datetime, fields: dict[str, Any]) -> None:
        """Hold the creates while a Secret/ConfigMap the pods need or the checkpoint bucket is
        missing (preflight.py): the Waiting condition says which, nothing sits stuck on a node."""
        held = self.preflight.check(job) if pl.create else None
        if held is None:
            return
        _uncount(pl, len(pl.create))
        pl.create = []
        pl.status, events = waiting.fold(pl.status, held, now)
        pl.events += [Event(*ev) for ev in events]
        if events:
            log.warning("preflight: workers held", extra={**fields, "reason": held.reason,
                                                          "error": held.message[:500]})

    def _create(self, namespace: str, job, pl: Plan, now: dt.datetime, fields: dict[str, Any]) -> None:
        """Create the plan's pods; a pod the API server refuses stops the creates and is
        folded into the status about to be written (refusals.py): no exception, no traceback."""
        for n, index in enumerate(pl.create):
            manifest = self.recovery.prepare_pod(render_pod(job, index, pl.incarnation, self.render), job.name,
                                                 pl.avoid_nodes)
            pod = manifest["metadata"]["name"]
            try:
                created = self.kube.create_pod(namespace, manifest)
            except KubeError as e:
                if isinstance(e, Conflict) or e.status == 404:
                    raise
                was = waiting.current(pl.status.get("conditions") or [])
                pl.status, events, pl.incident = refusals.fold_refusal(pl.status, pod=pod, code=e.status,
                                                                       message=e.message, now=now)
                pl.events += [Event(*ev) for ev in events]
                _uncount(pl, len(pl.create) - n)
                if events or was is None:
                    log.warning("the API server refused a worker pod", extra={
                        **fields, "pod": pod, "status": e.status, "error": e.message[:500],
                        "phase": pl.status.get("phase"), "reason": pl.status.get("reason")})
                return
            if self.cache is not None:
                self.cache.created_pod(namespace, job.name, pod)
            if created:
                metrics.PODS_CREATED.inc()
                log.info("created worker pod", extra={**fields, "pod": pod})

    def _deleted(self, namespace: str, job: str, pod: str) -> None:
        if self.cache is not None:
            self.cache.deleted_pod(namespace, job, pod)

    def _write_due(self, namespace: str, name: str, old: dict[str, Any], pl: Plan) -> bool:
        """One status write per pass at most; heartbeat-only changes are throttled (status.write_due)."""
        at = self._written_at.get((namespace, name))
        urgent = bool(pl.events or pl.incident or pl.restart_cause or pl.checkpoint_request or pl.annotate
                      or pl.drain_reason or pl.delete_job)
        return write_due(old, pl.status, since_write_s=None if at is None else self.mono() - at,
                         min_interval_s=self.status_heartbeat_interval_s, urgent=urgent)

    def _read_job(self, namespace: str, name: str, fresh: bool) -> dict[str, Any] | None:
        body = None if self.cache is None or fresh else self.cache.job(namespace, name)
        if body is None:
            body = self.kube.get_job(namespace, name)
            if self.cache is not None:
                self.cache.prime_job(namespace, name, body)
        return body

    def _read_pods(self, namespace: str, name: str, fresh: bool) -> list:
        """The views of the job's pods: from the watch cache when it is current, else a LIST."""
        if self.cache is None:
            return [v for v in (pod_view(p) for p in self.kube.list_pods(namespace, name)) if v is not None]
        views = None if fresh else self.cache.pods(namespace, name)
        if views is None:
            self.cache.prime_pods(namespace, name, *self.kube.list_pods_at(namespace, name))
            views = self.cache.pods(namespace, name) or []
        return views

    def _pass(self, namespace: str, name: str, fields: dict[str, Any], fresh: bool = True) -> Plan | None:
        body = self._read_job(namespace, name, fresh)
        if body is None:
            metrics.observe_phase(namespace, name, None)
            return None
        job = job_view(body)
        if job.deleting:
            return None  # ownerReferences + GC remove the pods
        pods = self._read_pods(namespace, name, fresh)
        obs = self.recovery.observe(namespace, name, pods)
        workload = self.kueue.observe(job)
        now = self.clock()
        pl = plan(job, pods, now, obs, self.recovery.settings, workload)
        fields = {**fields, "uid": job.uid, "incarnation": pl.incarnation}

        for pod in pl.force_delete:
            if self.recovery.force_delete(namespace, pod):
                self._deleted(namespace, name, pod)
                metrics.PODS_DELETED.inc()
                log.warning("force-deleted worker pod stuck on a lost node", extra={**fields, "pod": pod})
        for pod in pl.delete:
            if pod in pl.force_delete:
                continue
            # A short grace: the launcher holds SIGTERM for a drain only when someone else deletes the
            # pod with its full grace period (preemption); the operator's own deletes need no drain.
            if self.kube.delete_pod(namespace, pod, grace_s=self.recovery.settings.delete_grace_s):
                self._deleted(namespace, name, pod)
                metrics.PODS_DELETED.inc()
                log.info("deleted worker pod", extra={**fields, "pod": pod})
        self.kueue.act(job, workload, pl, now)   # after the deletes: a release needs the workers gone
        self._preflight(job, pl, now, fields)
        if pl.create:
            self.recovery.before_create(job)
        self._create(namespace, job, pl, now, fields)

        old = dict(body.get("status") or {})
        if "conditions" in pl.status:
            pl.status["conditions"] = with_observed_generation(pl.status["conditions"],
                                                               body["metadata"].get("generation"))
        if self._write_due(namespace, name, old, pl):
            patch = status_patch(old, pl.status)
            try:
                written = self.kube.patch_job_status(namespace, name, body["metadata"]["resourceVersion"], patch)
                self._written[(namespace, name)] = written.get("metadata", {}).get("resourceVersion", "")
                self._written_at[(namespace, name)] = self.mono()
                if self.cache is not None:
                    self.cache.wrote_job(written)
            except KubeError as e:
                if e.status != 404:
                    raise
                log.info("job deleted during the pass", extra=fields)  # its pods go with it (GC)
                metrics.observe_phase(namespace, name, None)
                return None
            if pl.restart_cause:
                metrics.RESTARTS.labels(pl.restart_cause).inc()
            if old.get("phase") != pl.status.get("phase"):
                log.info("phase changed", extra={**fields, "from": old.get("phase"), "to": pl.status.get("phase"),
                                                 "reason": pl.status.get("reason")})
            # Events only after the status write succeeded, only for transitions.
            for ev in pl.events:
                self.kube.emit_event(body, ev.type, ev.reason, ev.message)
            self.recovery.after_write(body, pl.incident)
            self.recovery.on_call(body, pl.checkpoint_request, pl.annotate)
            self.recovery.drain(body, pl.drain_reason, pl.drain_id)
        metrics.observe_phase(namespace, name, pl.status.get("phase"))
        job_metrics.observe(namespace, name, pl.status, self.recovery.heartbeats)  # scrape-time per-job metrics

        if pl.delete_job:
            log.info("deleting finished job (ttl)", extra=fields)
            self.kube.delete_job(namespace, name, job.uid)
            metrics.observe_phase(namespace, name, None)
        if pl.requeue_after is not None and pl.requeue_after <= self.requeue_horizon_s:
            self.trigger_soon(namespace, name, max(0.05, pl.requeue_after + 0.05))
        return pl
