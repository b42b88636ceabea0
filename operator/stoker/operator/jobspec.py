"""A typed, defaulted view of a TrainingJob body. Pure; no kopf, no API calls.

The API server already applied the schema defaults; the fallbacks here cover
objects created before a default existed and unit tests that pass bare dicts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


IN_PLACE_RESTARTS = 3  # spec.failurePolicy.inPlaceRestarts' default (the CRD's too)


@dataclasses.dataclass(frozen=True)
class ExitCodeRule:
    exit_codes: frozenset[int]
    action: str  # RestartJob | FailJob | Ignore


@dataclasses.dataclass(frozen=True)
class JobView:
    name: str
    namespace: str
    uid: str
    generation: int
    deleting: bool
    replicas: int
    min_replicas: int
    max_replicas: int
    nproc_per_node: int
    template: Mapping[str, Any]
    checkpoint: Mapping[str, Any] | None
    max_restarts: int
    in_place_restarts: int                # fixed-size jobs: a failed trainer restarts in its pod this often
    backoff_seconds: int
    heartbeat_timeout_seconds: int
    progress_timeout_seconds: int | None
    startup_timeout_seconds: int | None   # None: the operator's --startup-timeout
    pending_timeout_seconds: int | None   # None: a job that cannot start waits (and says why)
    exit_code_rules: tuple[ExitCodeRule, ...]
    suspend: bool
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    clean_pod_policy: str
    scheduling: Mapping[str, Any]
    status: Mapping[str, Any]
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    health: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # spec.health
    spares: int = 0                       # spec.spares: hot spare pods beside the replicas (fixed-size jobs)

    @property
    def elastic(self) -> bool:
        return self.min_replicas != self.max_replicas

    @property
    def hot_spares(self) -> int:
        """The spares the job runs: spec.spares for a fixed-size job (an elastic one takes none)."""
        return 0 if self.elastic else max(0, self.spares)

    @property
    def pods(self) -> int:
        """Worker pods to run: the replicas (the world) and the hot spares."""
        return self.replicas + self.hot_spares


def job_view(body: Mapping[str, Any]) -> JobView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    if "maxReplicas" in spec:  # elastic: MIN defaults to 1 so scaling never changes --nnodes
        max_r = int(spec["maxReplicas"])
        min_r = int(spec.get("minReplicas", 1))
    else:                      # fixed size
        min_r = int(spec.get("minReplicas", replicas))
        max_r = replicas
    fp = spec.get("failurePolicy") or {}
    rp = spec.get("runPolicy") or {}
    rules = tuple(
        ExitCodeRule(frozenset(int(c) for c in r.get("exitCodes", [])), str(r.get("action", "RestartJob")))
        for r in fp.get("exitCodeRules") or []
    )
    return JobView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 0) or 0),
        deleting=bool(meta.get("deletionTimestamp")),
        replicas=replicas,
        min_replicas=min_r,
        max_replicas=max_r,
        nproc_per_node=int(spec.get("nprocPerNode", 1)),
        template=spec.get("template") or {},
        checkpoint=spec.get("checkpoint"),
        max_restarts=int(fp.get("maxRestarts", 3)),
        in_place_restarts=int(fp.get("inPlaceRestarts", IN_PLACE_RESTARTS)),
        backoff_seconds=int(fp.get("backoffSeconds", 10)),
        heartbeat_timeout_seconds=int(fp.get("heartbeatTimeoutSeconds", 60)),
        progress_timeout_seconds=int(fp["progressTimeoutSeconds"]) if fp.get("progressTimeoutSeconds") else None,
        startup_timeout_seconds=int(fp["startupTimeoutSeconds"]) if fp.get("startupTimeoutSeconds") else None,
        pending_timeout_seconds=int(fp["pendingTimeoutSeconds"]) if fp.get("pendingTimeoutSeconds") else None,
        exit_code_rules=rules,
        suspend=bool(rp.get("suspend", False)),
        active_deadline_seconds=rp.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=rp.get("ttlSecondsAfterFinished"),
        clean_pod_policy=str(rp.get("cleanPodPolicy", "Running")),
        scheduling=spec.get("scheduling") or {},
        status=body.get("status") or {},
        labels=meta.get("labels") or {},
        annotations=meta.get("annotations") or {},
        health=spec.get("health") or {},
        spares=int(spec.get("spares", 0) or 0),
    )
