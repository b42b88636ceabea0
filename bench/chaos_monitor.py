"""What bench/chaos.py watches while a job runs (``Monitor``: incidents, pods, commits in
the bucket) and the per-fault latencies it derives from that."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from bench import chaos_faults as K
from stoker.common.layout import COMMIT_MARKER, parse_step_dir


def cached(fn: Callable[[], Any], ttl: float = 0.25) -> Callable[[], Any]:
    """``fn()`` asked at most every ``ttl`` seconds: the faults' waits ask for the job's
    incarnation and phase every 20-50 ms, an API request each that the trainers' CPU paid."""
    lock, last = threading.Lock(), [float("-inf"), None]

    def get() -> Any:
        with lock:
            if time.monotonic() - last[0] >= ttl:
                last[1], last[0] = fn(), time.monotonic()
            return last[1]

    return get


def pod_lister(kubeconfig: Path, namespace: str) -> Callable[[str], list[dict]]:
    """A job's pods as dicts, through the API client: a kubectl process a second takes
    its CPU from the trainers under test on 2 cores."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

    def pods(job: str) -> list[dict]:
        try:
            resp = api.list_namespaced_pod(namespace, label_selector=f"stoker.dev/job-name={job}",
                                           _preload_content=False)
            return json.loads(resp.data)["items"]
        except Exception:  # noqa: BLE001 - a blip: ask again next time
            return []

    return pods


class Monitor(threading.Thread):
    """Polls the job while faults are injected: when each incident appeared (wall clock),
    whether two live pods ever held one worker index, and the checkpoints committed in the
    bucket (step -> its COMMITTED marker's LastModified): the storage witness of a commit
    whose outcome a killed trainer never journalled."""

    def __init__(self, bench: Any, name: str, pods: Callable[[str], list[dict]] | None = None) -> None:
        super().__init__(daemon=True)
        self.b, self.name = bench, name
        self.pods = pods or bench.pods
        self.incident_times: list[float] = []
        self.duplicates: list[str] = []
        self.stored: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        seen, n = 0, 0
        while not self._halt.wait(0.2):
            st = self.b.status(self.name)
            count = len([i for i in st.get("incidents") or [] if i.get("kind") in ("Restart", "Replace")])
            if count > seen:
                self.incident_times += [time.time()] * (count - seen)
                seen = count
            n += 1
            if n % 5 == 0:
                self.check_pods()
                self.check_storage()

    def check_pods(self) -> None:
        live: dict[str, list[str]] = {}
        for p in self.pods(self.name):
            meta, phase = p["metadata"], p.get("status", {}).get("phase")
            if meta.get("deletionTimestamp") or phase not in ("Pending", "Running"):
                continue
            live.setdefault(meta["labels"].get("stoker.dev/replica-index", "?"), []).append(meta["name"])
        self.duplicates += [",".join(v) for v in live.values() if len(v) > 1]

    def check_storage(self) -> None:
        try:
            pages = self.b.s3.get_paginator("list_objects_v2").paginate(Bucket=self.b.bucket, Prefix=f"{self.name}/")
            objs = [o for page in pages for o in page.get("Contents") or []]
        except Exception:  # noqa: BLE001 - S3 may be down on purpose (s3_outage)
            return
        for o in objs:
            parts = o["Key"].split("/")
            step = parse_step_dir(parts[1]) if len(parts) == 3 and parts[2] == COMMIT_MARKER else None
            if step is not None:
                self.stored.setdefault(step, o["LastModified"].timestamp())

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.check_storage()


def injected_at(s: dict) -> float:
    """When a sample's fault began (a during_recovery's first kill comes before its t0)."""
    times = [t for t in (s.get("t0"), (s.get("first") or {}).get("t0")) if t is not None]
    return min(times) if times else float("inf")


def attach_latency(s: dict, incident_times: list[float], recs: list[dict], until: float = float("inf"),
                   incidents: list[dict] | None = None) -> None:
    """detect_s / recover_s (until a step of a newer generation than the one hit, ``recs`` with
    generations: faults.with_generations) of one fault, from incidents recorded before the next fault's
    injection (``until``): the restart a later fault caused is not this one's (a short
    run credited an S3 outage with the next fault's kill, 42 s later). With ``incidents``
    (the job's Restart/Replace incidents, in the order ``incident_times`` saw them) the
    sample also says what the operator blamed (``caused``: its detectedCause, or None)."""
    t0 = s.get("t0")
    if t0 is None:
        return
    det = [(t, i) for i, t in enumerate(incident_times) if t0 <= t < until]
    s["detect_s"] = det[0][0] - t0 if det and (s["expect"] == K.RESTARTS or det[0][0] - t0 < 120) else None
    gen = s.get("generation", -1)
    new = [r["t"] for r in recs if r["event"] == "step" and r["generation"] > gen and r["t"] > t0]
    s["recover_s"] = min(new) - t0 if new and s.get("detect_s") is not None else None
    if incidents is not None:
        i = det[0][1] if s["detect_s"] is not None else None
        s["caused"] = (incidents[i].get("detectedCause") or incidents[i].get("kind")) \
            if i is not None and i < len(incidents) else None


def wait_phase(b: Any, name: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < end:
        phase = b.status(name).get("phase", "")
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(0.5)
    return f"timeout ({phase})"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
