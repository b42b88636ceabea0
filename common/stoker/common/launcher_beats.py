"""Launchers' keepalives (the ``LauncherAlive`` call): when each pod's launcher last spoke.

A launcher (stoker.operator.launch, torchrun's agent) restarts its trainers in place and ends
its pod; a stopped or stuck one does neither, and nothing else shows it: its trainer trains on,
or is gone and its pod stays Running. It says it is alive every heartbeat interval, one unary
call each; ``heartbeat_checks.frozen_launcher`` reads these. Thread-safe.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

STALE_S = 600.0  # an entry not renewed this long is dropped (its pod is gone: a past incarnation)


@dataclass(frozen=True)
class LauncherBeat:
    namespace: str
    job_name: str
    pod_name: str
    node_name: str
    incarnation: int
    last_seen: float          # the heartbeat clock (monotonic) of its newest keepalive


class LauncherBeats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[tuple[str, str, str], LauncherBeat] = {}

    def alive(self, beat: LauncherBeat) -> None:
        with self._lock:
            self._beats[(beat.namespace, beat.job_name, beat.pod_name)] = beat
            for key in [k for k, b in self._beats.items() if beat.last_seen - b.last_seen > STALE_S]:
                del self._beats[key]

    def of_job(self, namespace: str, job_name: str) -> list[LauncherBeat]:
        with self._lock:
            return sorted((b for (ns, j, _), b in self._beats.items() if ns == namespace and j == job_name),
                          key=lambda b: b.pod_name)

    def all(self) -> list[LauncherBeat]:
        with self._lock:
            return list(self._beats.values())

    def forget(self, namespace: str, job_name: str) -> None:
        with self._lock:
            for key in [k for k in self._beats if k[:2] == (namespace, job_name)]:
                del self._beats[key]
