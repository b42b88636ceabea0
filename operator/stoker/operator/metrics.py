"""Prometheus metrics (prometheus_client), named per Prometheus conventions."""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from . import job_metrics

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("stoker_trainingjobs", "TrainingJobs seen by this operator, by phase",
             ["phase"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("stoker_reconcile_duration_seconds", "Duration of one reconcile pass",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                              registry=REGISTRY)
RECONCILE_ERRORS = Counter("stoker_reconcile_errors_total", "Reconcile passes that raised",
                           ["error"], registry=REGISTRY)
RESTARTS = Counter("stoker_job_restarts_total", "Whole-job restarts decided, by cause",
                   ["cause"], registry=REGISTRY)
DETECTIONS = Counter("stoker_failures_detected_total", "Failures acted on, by detected cause",
                     ["cause"], registry=REGISTRY)
DETECTION_LATENCY = Histogram("stoker_failure_detection_seconds",
                              "Estimated failure onset to detection, by detected cause", ["cause"],
                              buckets=(0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600), registry=REGISTRY)
NODE_FAILURES = Counter("stoker_node_job_failures_total", "Job failures attributed to a node", ["node"],
                        registry=REGISTRY)
PODS_CREATED = Counter("stoker_worker_pods_created_total", "Worker pods created", registry=REGISTRY)
PODS_DELETED = Counter("stoker_worker_pods_deleted_total", "Worker pods deleted", registry=REGISTRY)

for _p in job_metrics.PHASES:
    JOBS.labels(_p).set(0)
for _c in ("userError", "infrastructure", "preemption"):
    RESTARTS.labels(_c)
REGISTRY.register(job_metrics.COLLECTOR)  # per-job families, computed at scrape time

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Track the phase of one job (None when it is gone) and refresh the gauge."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
            job_metrics.forget(namespace, name)
        else:
            _phases[(namespace, name)] = phase
        counts: dict[str, int] = {}
        for ph in _phases.values():
            counts[ph] = counts.get(ph, 0) + 1
        for ph in job_metrics.PHASES:
            JOBS.labels(ph).set(counts.get(ph, 0))


def serve(port: int, addr: str = "0.0.0.0") -> None:
    if port > 0:
        start_http_server(port, addr=addr, registry=REGISTRY)
