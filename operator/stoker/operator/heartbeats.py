"""The operator's heartbeat service: H4's ``HeartbeatServer`` embedded in the
operator, with per-job tokens kept in per-job Secrets.

Per job the operator creates a Secret ``stoker-<job>-token`` (owned by the job,
so it goes with it) holding a random token under key ``token``. Worker pods get
it as ``STOKER_JOB_TOKEN`` through a ``secretKeyRef`` (``token_env``) -- the token
never appears in a pod spec -- and ``STOKER_OPERATOR_ADDR`` as an IP:port.

Every heartbeat also feeds the ``ProgressTracker`` (below) (last message, last
step advance, step times), which the reconcile pass reads through ``ranks()``.

    hb = OperatorHeartbeats(kube, "0.0.0.0:50051", on_change=controller.trigger)
    hb.start()
    hb.ensure_secret(job)                  # before creating the job's pods
    hb.ranks(ns, name, incarnation)        # -> [detection.RankProgress]
    hb.request_checkpoint(ns, name, stop=True, reason="scale-down")
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from stoker.common import env as E
from stoker.common.auth import derived_lookup, key_id, new_token
from stoker.common.launcher_beats import LauncherBeat
from stoker.common.heartbeat_server import (CHECKPOINT_NOW, STOP_AFTER_CHECKPOINT, HeartbeatRegistry,
                                            HeartbeatServer, LauncherReport, WorkerStatus)

from . import detection as D
from .heartbeat_checks import LAUNCHER_EXIT_S, LAUNCHER_FROZEN_FACTOR
from .kube import KubeApi

log = logging.getLogger("stoker.operator.heartbeats")

TOKEN_KEY = "token"
LOOKUP_RETRY_S = 5.0   # an unknown job's Secret is re-read at most this often


def secret_name(job_name: str, suffix: str = "") -> str:
    return f"stoker-{job_name}-token{suffix}"


def token_env(job_name: str, suffix: str = "") -> dict[str, Any]:
    """The pod env entry that carries the job's token (never the literal)."""
    return {"name": E.JOB_TOKEN, "valueFrom": {"secretKeyRef": {"name": secret_name(job_name, suffix),
                                                                "key": TOKEN_KEY}}}


def secret_manifest(namespace: str, job_name: str, owner: dict[str, Any], token: str,
                    labels: dict[str, str] | None = None, suffix: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret_name(job_name, suffix), "namespace": namespace, "labels": dict(labels or {}),
                     "ownerReferences": [owner]},
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


class OperatorHeartbeats:
    def __init__(self, kube: KubeApi, address: str = "0.0.0.0:0", *,
                 on_change: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, key: str | None = None,
                 frozen_after_s: float | None = None, node_quiet_after_s: float | None = None,
                 collective_after_s: float | None = None) -> None:
        self.kube = kube
        self.clock = clock
        # With an install key (chart installs) tokens are derived from it, so the separate
        # rendezvous store can check them; their Secrets are named for the key, so a job's
        # Secret with a random token (made before the key) is never mistaken for one.
        self._derive = derived_lookup(key) if key else None
        self.secret_suffix = f"-{key_id(key)}" if key else ""
        self.tracker = ProgressTracker()
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], str] = {}
        self._misses: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str, int], tuple[str, int | None]] = {}  # phase, committed step
        self._on_change = on_change
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hb-trigger") if on_change else None
        self.registry = HeartbeatRegistry(on_update=self._observe, clock=clock, on_report=self._reported)
        self.server = HeartbeatServer(self.lookup, address, registry=self.registry)
        # A rank going silent sends nothing that would start a pass: the watchdog notices the
        # moment its silence crosses the frozen threshold and asks for one (heartbeat_checks).
        self.frozen_after_s = frozen_after_s
        self.watch_after_s = tuple(x for x in (node_quiet_after_s, frozen_after_s) if x)
        self.collective_after_s = collective_after_s
        self._halt = threading.Event()
        self._flagged: set[tuple] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> int:
        if (self.watch_after_s or self.collective_after_s) and self._pool is not None:
            threading.Thread(target=self._watch, name="hb-watchdog", daemon=True).start()
        return self.server.start()

    def stop(self) -> None:
        self._halt.set()
        self.server.stop(grace=0.5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def port(self) -> int | None:
        return self.server.port

    # ------------------------------------------------------------------ tokens
    def _read_token(self, namespace: str, job_name: str) -> str | None:
        body = self.kube.get_secret(namespace, secret_name(job_name, self.secret_suffix))
        if body is None:
            return None
        raw = (body.get("data") or {}).get(TOKEN_KEY)
        return base64.b64decode(raw).decode() if raw else None

    def lookup(self, namespace: str, job_name: str) -> str | None:
        """TokenLookup for the gRPC server: cached; unknown jobs re-read at most every few seconds."""
        if self._derive is not None:
            return self._derive(namespace, job_name)
        key = (namespace, job_name)
        with self._lock:
            if key in self._tokens:
                return self._tokens[key]
            if self.clock() - self._misses.get(key, -1e9) < LOOKUP_RETRY_S:
                return None
        try:
            token = self._read_token(namespace, job_name)
        except Exception as exc:  # noqa: BLE001 - the API server may be briefly away
            log.warning("heartbeat token lookup failed", extra={"job": job_name, "namespace": namespace,
                                                                "error": str(exc)})
            token = None
        with self._lock:
            if token:
                self._tokens[key] = token
                self._misses.pop(key, None)
            else:
                self._misses[key] = self.clock()
        return token

    def ensure_secret(self, namespace: str, job_name: str, owner: dict[str, Any],
                      labels: dict[str, str] | None = None) -> str:
        """The job's token, creating its Secret on first use (idempotent)."""
        with self._lock:
            if (namespace, job_name) in self._tokens:
                return self._tokens[(namespace, job_name)]
        token = self._read_token(namespace, job_name)
        if token is None:
            token = self._derive(namespace, job_name) if self._derive else new_token()
            manifest = secret_manifest(namespace, job_name, owner, token, labels, self.secret_suffix)
            if not self.kube.create_secret(namespace, manifest):  # created concurrently: use theirs
                token = self._read_token(namespace, job_name) or token
            else:
                log.info("created heartbeat token secret", extra={"job": job_name, "namespace": namespace,
                                                                  "secret": manifest["metadata"]["name"]})
        with self._lock:
            self._tokens[(namespace, job_name)] = token
            self._misses.pop((namespace, job_name), None)
        return token

    # ------------------------------------------------------------------ observations
    def _observe(self, w: WorkerStatus) -> None:
        m = w.metrics or {}
        with self._lock:
            self.tracker.observe(w.namespace, w.job_name, rank=w.rank, incarnation=w.incarnation, step=w.step,
                                 now=w.last_seen_monotonic, pod_name=w.pod_name, node_name=w.node_name,
                                 phase=w.phase, connected=w.connected, error=w.error,
                                 step_time_s=m.get("step_time_seconds"),
                                 checkpoint_s=m.get("checkpoint_duration_seconds"),
                                 activity=w.activity, activity_s=w.activity_seconds, stream=w.stream)
            key = (w.namespace, w.job_name, w.rank)
            now = (w.phase, m.get("last_committed_step"), w.connected)
            changed = self._last.get(key) != now
            self._last[key] = now
        # A phase change (FAILED, FINISHED), a new checkpoint or a stream that ended (a crash, or its
        # node lost: heartbeat_checks.quiet_nodes): reconcile soon.
        if changed and self._pool is not None:
            self._pool.submit(self._notify, w.namespace, w.job_name)

    def _reported(self, r: LauncherReport) -> None:
        """A launcher restarts a trainer in place: reconcile at once (policy_inplace records it)."""
        if self._pool is not None:
            self._pool.submit(self._notify, r.namespace, r.job_name)

    def reports(self, namespace: str, job_name: str) -> list[LauncherReport]:
        return self.registry.reports(namespace, job_name)

    def launchers(self, namespace: str, job_name: str) -> list[LauncherBeat]:
        """The job's launchers' keepalives (launcher_beats.py)."""
        return self.registry.launchers.of_job(namespace, job_name)

    def newest_heard(self) -> float | None:
        return self.registry.newest_seen or None

    def all_ranks(self) -> list[D.RankProgress]:
        """Every rank of every job, as last heard (heartbeat_checks.quiet_nodes reads them by node)."""
        with self._lock:
            return [t.progress for _, t in self.tracker.items()]

    def silent_now(self) -> list[tuple[str, str]]:
        """Jobs with a rank whose silence just crossed one of ``watch_after_s`` (the node-quiet and the
        frozen thresholds), or whose ranks all just passed ``collective_after_s`` waiting in a collective
        (each crossing once)."""
        ref = self.registry.newest_seen
        out: set[tuple[str, str]] = set()
        with self._lock:
            tracks = [(k, t.progress) for k, t in self.tracker.items()]
        live = set()
        for (ns, job, rank), r in tracks:
            for limit in self.watch_after_s:
                key = (ns, job, rank, r.last_seen, limit)
                live.add(key)
                if r.connected and r.phase not in ("FINISHED", "FAILED") and ref - r.last_seen > limit \
                        and key not in self._flagged:
                    self._flagged.add(key)
                    out.add((ns, job))
        launcher_limits = (LAUNCHER_FROZEN_FACTOR * self.frozen_after_s, LAUNCHER_EXIT_S) if self.frozen_after_s else ()
        for b in self.registry.launchers.all():  # a launcher gone quiet (heartbeat_checks.frozen_launcher)
            for limit in launcher_limits:
                key = ("launcher", b.namespace, b.job_name, b.pod_name, b.last_seen, limit)
                live.add(key)
                if ref - b.last_seen > limit and key not in self._flagged:
                    self._flagged.add(key)
                    out.add((b.namespace, b.job_name))
        for key in collective_waits(tracks, self.clock(), self.collective_after_s):
            live.add(key)
            if key not in self._flagged:
                self._flagged.add(key)
                out.add(key[:2])
        self._flagged &= live
        return sorted(out)

    def _watch(self, every_s: float = 0.25) -> None:
        while not self._halt.wait(every_s):
            for ns, job in self.silent_now():
                self._pool.submit(self._notify, ns, job)  # type: ignore[union-attr]

    def _notify(self, namespace: str, name: str) -> None:
        try:
            self._on_change(namespace, name)  # type: ignore[misc]
        except Exception:  # noqa: BLE001
            log.exception("heartbeat-triggered reconcile failed", extra={"job": name, "namespace": namespace})

    def ranks(self, namespace: str, job_name: str, incarnation: int | None = None) -> list[D.RankProgress]:
        with self._lock:
            return self.tracker.ranks(namespace, job_name, incarnation)

    def workers(self, namespace: str, job_name: str) -> list[WorkerStatus]:
        return self.registry.workers(namespace, job_name)

    def request_checkpoint(self, namespace: str, job_name: str, *, stop: bool = False, reason: str = "",
                           ttl_s: float = 600.0) -> str:
        return self.registry.queue_command(namespace, job_name, STOP_AFTER_CHECKPOINT if stop else CHECKPOINT_NOW,
                                           reason=reason, ttl_s=ttl_s)

    def command_acks(self, request_id: str) -> dict[int, str]:
        return self.registry.command_acks(request_id)

    def forget(self, namespace: str, job_name: str) -> None:
        self.registry.forget_job(namespace, job_name)
        with self._lock:
            self.tracker.forget(namespace, job_name)
            self._tokens.pop((namespace, job_name), None)
            for key in [k for k in self._last if k[:2] == (namespace, job_name)]:
                del self._last[key]


def collective_waits(tracks: list[tuple[tuple[str, str, int], D.RankProgress]], now: float,
                     after_s: float | None) -> list[tuple]:
    """(namespace, job, "collective", since) for each job whose live ranks have all waited in a
    collective longer than ``after_s``: the watchdog asks for a pass then (heartbeat_checks decides)."""
    if not after_s:
        return []
    jobs: dict[tuple[str, str, int], list[D.RankProgress]] = {}
    for (ns, job, _), r in tracks:
        if r.connected and r.phase not in ("FINISHED", "FAILED"):
            jobs.setdefault((ns, job, r.incarnation), []).append(r)
    out = []
    for (ns, job, _), rs in jobs.items():
        since = [r.activity_since for r in rs if r.activity == "collective" and r.activity_since is not None]
        if len(since) == len(rs) and now - max(since) > after_s:
            out.append((ns, job, "collective", max(since)))
    return out


# ---------------------------------------------------------------------------- per-rank progress


@dataclasses.dataclass
class _Track:
    progress: D.RankProgress
    step_at_mono: float
    stream: int = 0


class ProgressTracker:
    """Per (namespace, job, rank): when the step last advanced and recent step
    times. Fed from heartbeats (``observe``), read by the reconcile pass
    (``ranks``). Not thread-safe by itself; the heartbeat shell locks around it."""

    HISTORY = 20

    def __init__(self) -> None:
        self._t: dict[tuple[str, str, int], _Track] = {}

    def observe(self, namespace: str, job: str, *, rank: int, incarnation: int, step: int, now: float,
                pod_name: str = "", node_name: str = "", phase: str = "TRAINING", connected: bool = True,
                error: str = "", step_time_s: float | None = None, checkpoint_s: float | None = None,
                activity: str = "", activity_s: float = 0.0, stream: int = 0) -> D.RankProgress:
        """Record one heartbeat. A step time reported by the worker is preferred;
        otherwise it is measured between heartbeats that saw the step grow. ``stream``: which
        heartbeat stream spoke (a new one is a new process, e.g. a trainer restarted in place)."""
        key = (namespace, job, rank)
        old = self._t.get(key)
        if old is None or incarnation != old.progress.incarnation or step < old.progress.step:
            # first sight, another incarnation, or a process restarted in place (step went back)
            times: tuple[float, ...] = ()
            advanced = step_at = started = now
        else:
            times, advanced, step_at = old.progress.step_times, old.progress.advanced_at, old.step_at_mono
            started = now if stream and old.stream and stream != old.stream else old.progress.started_at
            if step > old.progress.step:
                per = None
                if step_time_s is not None and step_time_s > 0:
                    per = float(step_time_s)
                elif old.progress.step >= 0:
                    per = (now - old.step_at_mono) / (step - old.progress.step)
                if per is not None:
                    times = (times + (per,))[-self.HISTORY:]
                advanced = step_at = now
            elif old.progress.phase == "CHECKPOINTING" and phase != "CHECKPOINTING":
                # A save that held the step (storage retrying) just ended: the stall clock starts
                # again here, or the moment the exemption for it ends looks like a long hang
                # (bench/chaos.py: S3 down 10 s -> "step stuck for 20s", a needless restart).
                advanced = now
        prog = D.RankProgress(rank=rank, incarnation=incarnation, step=step, last_seen=now, advanced_at=advanced,
                            pod_name=pod_name, node_name=node_name, phase=phase, connected=connected, error=error,
                            step_times=times, checkpoint_s=checkpoint_s, activity=activity,
                            activity_since=now - activity_s if activity else None, started_at=started)
        self._t[key] = _Track(prog, step_at, stream or (old.stream if old else 0))
        return prog

    def items(self) -> list[tuple[tuple[str, str, int], _Track]]:
        return list(self._t.items())

    def ranks(self, namespace: str, job: str, incarnation: int | None = None) -> list[D.RankProgress]:
        out = [t.progress for (ns, j, _), t in self._t.items() if ns == namespace and j == job]
        if incarnation is not None:
            out = [r for r in out if r.incarnation == incarnation]
        return sorted(out, key=lambda r: r.rank)

    def forget(self, namespace: str, job: str) -> None:
        for key in [k for k in self._t if k[:2] == (namespace, job)]:
            del self._t[key]
