"""Pure facts about TrainingJobs for the on-call CLI: what `get`, `describe`,
`top`, `scale`, `checkpoint --wait` and `drain` show and decide, computed from
plain API objects (dicts) and a clock. Tables and `-o json|yaml` are both
rendered from these dicts, so they always carry the same facts.

Status fields read (all optional; absent ones show as '-'):
``status.phase``, ``readyReplicas``/``desiredReplicas``/``replicas``,
``metrics.{step,tokensPerSecond,loss,updateTime}``, ``lastCheckpoint.{step,time,uri}``,
``restarts.total``, ``incarnation``, ``conditions``, ``incidents`` (with
``recoveredAt``/``timeToRecoverSeconds``/``detectionLatencySeconds`` when the
operator fills them), and ``workers`` when it is a list of per-rank entries
(``rank``/``pod``, ``step``, ``lastHeartbeatTime``/``lastSeen``).
"""
from __future__ import annotations

import datetime as dt
import difflib
from typing import Any, Iterable, Mapping

from stoker.common import labels as L

from .output import age_seconds, parse_time

# status.metrics fields of the training picture (the operator's supervision.training_metrics writes them)
TRAINING_FIELDS = ("gradNorm", "learningRate", "valLoss", "dataWaitFraction", "collectiveWaitFraction", "gpuUtilization",
                   "gpuMemoryBytes")
STALL_SECONDS_DEFAULT = 300.0   # metrics older than this while Running: STALLED (unless progressTimeoutSeconds)


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


def _num(v: Any) -> float | None:
    try:
        return float(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------- workers
def pod_ready(pod: Mapping) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_restarts(pod: Mapping) -> int:
    return sum(int(c.get("restartCount") or 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def pod_phase(pod: Mapping) -> str:
    """Phase as `kubectl get pods` would summarise it (Terminating, waiting reasons)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    st = pod.get("status") or {}
    for c in st.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
            return waiting["reason"]
    return st.get("phase") or "Pending"


def worker_index(pod: Mapping) -> int | None:
    return _int(((pod.get("metadata") or {}).get("labels") or {}).get(L.REPLICA_INDEX))


def pod_incarnation(pod: Mapping) -> int:
    return _int(((pod.get("metadata") or {}).get("labels") or {}).get(L.INCARNATION)) or 0


def current_workers(pods: Iterable[Mapping]) -> list[Mapping]:
    """One pod per replica index: the newest incarnation, a live pod over a deleting one."""
    best: dict[int, Mapping] = {}
    for p in pods:
        i = worker_index(p)
        if i is None:
            continue
        key = (pod_incarnation(p), not (p.get("metadata") or {}).get("deletionTimestamp"),
               (p.get("metadata") or {}).get("creationTimestamp") or "")
        old = best.get(i)
        if old is None or key > (pod_incarnation(old), not (old.get("metadata") or {}).get("deletionTimestamp"),
                                 (old.get("metadata") or {}).get("creationTimestamp") or ""):
            best[i] = p
    return [best[i] for i in sorted(best)]


def _rank_status(status: Mapping) -> dict[str, Mapping]:
    """status.workers as a per-rank list (if the operator publishes one), by pod and by rank."""
    out: dict[str, Mapping] = {}
    # The operator publishes them as status.workerHeartbeats (status.workers is the "ready/desired" column).
    entries = status.get("workerHeartbeats") or status.get("workers")
    if isinstance(entries, list):
        for e in entries:
            if not isinstance(e, Mapping):
                continue
            if e.get("pod"):
                out[f"pod:{e['pod']}"] = e
            for k in ("rank", "replicaIndex", "index"):
                if e.get(k) is not None:
                    out[f"rank:{e[k]}"] = e
                    break
    return out


def worker_rows(job: Mapping, pods: Iterable[Mapping], now: dt.datetime) -> list[dict[str, Any]]:
    status = job.get("status") or {}
    per_rank = _rank_status(status)
    rows = []
    for p in current_workers(pods):
        meta, spec = p.get("metadata") or {}, p.get("spec") or {}
        idx = worker_index(p)
        hb = per_rank.get(f"pod:{meta.get('name')}") or per_rank.get(f"rank:{idx}") or {}
        beat = hb.get("lastHeartbeatTime") or hb.get("lastSeen") or hb.get("lastHeartbeat")
        rows.append({
            "rank": idx,
            "pod": meta.get("name"),
            "node": spec.get("nodeName"),
            "phase": pod_phase(p),
            "ready": pod_ready(p),
            "restarts": pod_restarts(p),
            "incarnation": pod_incarnation(p),
            "podIP": (p.get("status") or {}).get("podIP"),
            "step": _int(hb.get("step")),
            "heartbeatAgeSeconds": age_seconds(beat, now) if isinstance(beat, str) else _num(hb.get("heartbeatAgeSeconds")),
        })
    return rows


# ------------------------------------------------------------------------ jobs
def open_incident(incidents: list[Mapping]) -> Mapping | None:
    for inc in reversed(incidents):
        if inc.get("kind") in ("Restart", "Replace"):
            return None if inc.get("recoveredAt") else inc
    return None


def health(job: Mapping, ready: int | None, desired: int | None, now: dt.datetime) -> tuple[str, str]:
    """(HEALTH, why): OK, PENDING, WAITING, DEGRADED, RECOVERING, STALLED, SUSPENDED, DONE, FAILED."""
    st, spec = job.get("status") or {}, job.get("spec") or {}
    phase = st.get("phase") or ""
    if phase == "Failed":
        return "FAILED", st.get("reason") or st.get("message") or "job failed"
    if phase == "Succeeded":
        return "DONE", "job succeeded"
    if phase == "Suspended" or (spec.get("runPolicy") or {}).get("suspend"):
        return "SUSPENDED", "spec.runPolicy.suspend is true"
    wait = next((c for c in st.get("conditions") or [] if c.get("type") == "Waiting" and c.get("status") == "True"),
                None)
    if wait:  # workers cannot start: the operator's Waiting condition says why and since when
        return "WAITING", f"{wait.get('reason')}: {wait.get('message')}"
    inc = open_incident(list(st.get("incidents") or []))
    if phase == "Restarting" or inc:
        why = (inc or {}).get("message") or st.get("reason") or "restarting"
        return "RECOVERING", why
    if phase in ("", "Created"):
        return "PENDING", "waiting for workers to start"
    if ready is not None and desired is not None and ready < desired:
        return "DEGRADED", f"{ready}/{desired} workers ready"
    metrics = st.get("metrics") or {}
    updated = age_seconds(metrics.get("updateTime"), now)
    limit = _num((spec.get("failurePolicy") or {}).get("progressTimeoutSeconds")) or STALL_SECONDS_DEFAULT
    if phase == "Running" and updated is not None and updated > limit:
        return "STALLED", f"no new metrics for {updated:.0f}s"
    return "OK", ""


def job_summary(job: Mapping, pods: Iterable[Mapping] | None, now: dt.datetime) -> dict[str, Any]:
    """The facts of one `get` row (also the `-o json` item)."""
    meta, spec, st = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    pods = list(pods or [])
    workers = current_workers(pods)
    desired = _int(st.get("desiredReplicas"))
    if desired is None:
        desired = _int(spec.get("replicas"))
    ready = _int(st.get("readyReplicas"))
    if ready is None and pods:
        ready = sum(1 for p in workers if pod_ready(p))
    metrics, ckpt = st.get("metrics") or {}, st.get("lastCheckpoint") or {}
    h, why = health(job, ready, desired, now)
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": st.get("phase") or "Pending",
        "workers": {"ready": ready if ready is not None else 0, "desired": desired},
        "step": _int(metrics.get("step")),
        "tokensPerSecond": _num(metrics.get("tokensPerSecond")),
        "loss": _num(metrics.get("loss")),
        "training": {k: _num(metrics.get(k)) for k in TRAINING_FIELDS},
        "anomalies": _int((st.get("health") or {}).get("anomalies")) or 0,
        "rollbacks": _int((st.get("health") or {}).get("rollbacks")) or 0,
        "lastCheckpoint": {
            "step": _int(ckpt.get("step")),
            "time": ckpt.get("time"),
            "ageSeconds": age_seconds(ckpt.get("time"), now),
            "uri": ckpt.get("uri"),
        } if ckpt else None,
        "restarts": _int((st.get("restarts") or {}).get("total")) or 0,
        "incarnation": _int(st.get("incarnation")) or 0,
        "health": h,
        "healthReason": why,
        "ageSeconds": age_seconds(meta.get("creationTimestamp"), now),
        "created": meta.get("creationTimestamp"),
    }


def incident_rows(job: Mapping) -> list[dict[str, Any]]:
    out = []
    for inc in (job.get("status") or {}).get("incidents") or []:
        out.append({
            "time": inc.get("time"),
            "kind": inc.get("kind"),
            "inPlace": bool(inc.get("inPlace")),   # a Restart inside the pods: same incarnation and pods
            "cause": inc.get("cause"),
            "detectedCause": inc.get("detectedCause"),
            "rank": inc.get("rank"), "pod": inc.get("pod"), "node": inc.get("node"),
            "exitCode": inc.get("exitCode"), "step": inc.get("step"),
            "incarnation": inc.get("incarnation"),
            "message": inc.get("message"),
            "error": inc.get("error"),
            "detectionLatencySeconds": _num(inc.get("detectionLatencySeconds")),
            "recoveredAt": inc.get("recoveredAt"),
            "timeToRecoverSeconds": _num(inc.get("timeToRecoverSeconds")),
        })
    return out


def spec_summary(job: Mapping) -> dict[str, Any]:
    spec = job.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    trainer = containers[0]
    ck = spec.get("checkpoint") or {}
    return {
        "replicas": _int(spec.get("replicas")),
        "minReplicas": _int(spec.get("minReplicas")),
        "maxReplicas": _int(spec.get("maxReplicas")),
        "nprocPerNode": _int(spec.get("nprocPerNode")),
        "image": trainer.get("image"),
        "command": " ".join(list(trainer.get("command") or []) + list(trainer.get("args") or [])),
        "checkpoint": {k: ck.get(k) for k in ("uri", "intervalSteps", "intervalSeconds", "keep")
                       if ck.get(k) is not None} or None,
        "credentialsSecret": (ck.get("credentialsSecretRef") or {}).get("name"),
        "failurePolicy": spec.get("failurePolicy") or {},
        "suspend": bool((spec.get("runPolicy") or {}).get("suspend")),
    }


def near_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Names close to a mistyped one: difflib matches, then substring matches."""
    cands = sorted(set(candidates))
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    for c in cands:
        if len(close) >= n:
            break
        if c not in close and name and (name in c or c in name):
            close.append(c)
    return close


# ----------------------------------------------------------------------- scale
def scale_error(job: Mapping, replicas: int) -> str | None:
    """Why `scale --replicas N` is not allowed for this job, or None."""
    spec = job.get("spec") or {}
    name = (job.get("metadata") or {}).get("name")
    if replicas < 1:
        return f"--replicas must be at least 1 (got {replicas})"
    mx = _int(spec.get("maxReplicas"))
    if mx is None:
        if replicas == _int(spec.get("replicas")):
            return None
        return (f"job {name} is not elastic: spec.maxReplicas is not set, so spec.replicas cannot change. "
                f"Set spec.minReplicas/spec.maxReplicas (kubectl edit tj/{name}) to allow scaling")
    mn = _int(spec.get("minReplicas")) or 1
    if not mn <= replicas <= mx:
        return (f"--replicas {replicas} is outside job {name}'s elastic range "
                f"[spec.minReplicas={mn}, spec.maxReplicas={mx}]; pick a value in that range or change the range")
    return None


# ------------------------------------------------------------------ checkpoint
def checkpoint_baseline(job: Mapping) -> dict[str, Any]:
    st = job.get("status") or {}
    ck = st.get("lastCheckpoint") or {}
    return {"checkpointStep": _int(ck.get("step")), "checkpointTime": ck.get("time"),
            "requestStep": _int((st.get("metrics") or {}).get("step"))}


def checkpoint_done(baseline: Mapping, job: Mapping) -> bool:
    """True once status.lastCheckpoint is newer than at request time and at or
    past the step the job had reached when the request was made."""
    ck = (job.get("status") or {}).get("lastCheckpoint") or {}
    step = _int(ck.get("step"))
    if step is None:
        return False
    before = baseline.get("checkpointStep")
    changed = before is None or step > before or (
        ck.get("time") and baseline.get("checkpointTime")
        and (parse_time(ck.get("time")) or dt.datetime.min.replace(tzinfo=dt.timezone.utc))
        > (parse_time(baseline.get("checkpointTime")) or dt.datetime.max.replace(tzinfo=dt.timezone.utc)))
    req = baseline.get("requestStep")
    return bool(changed) and (req is None or step >= req)


# ----------------------------------------------------------------------- drain
def drain_plan(node: str, pods: Iterable[Mapping]) -> dict[str, Any]:
    """Which TrainingJob workers run on ``node`` (grouped by job) and which other
    pods are there (left alone: drain only moves Stoker workers)."""
    jobs: dict[str, dict[str, Any]] = {}
    others = []
    for p in pods:
        meta = p.get("metadata") or {}
        if (p.get("spec") or {}).get("nodeName") != node:
            continue
        if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        job = (meta.get("labels") or {}).get(L.JOB_NAME)
        if not job:
            others.append(f"{meta.get('namespace')}/{meta.get('name')}")
            continue
        key = f"{meta.get('namespace')}/{job}"
        entry = jobs.setdefault(key, {"namespace": meta.get("namespace"), "job": job, "pods": []})
        entry["pods"].append(meta.get("name"))
    for e in jobs.values():
        e["pods"].sort()
    return {"node": node, "jobs": [jobs[k] for k in sorted(jobs)], "otherPods": sorted(others)}
