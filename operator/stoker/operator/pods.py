"""Worker pod rendering (observed pods are parsed by ``podview``). Pure functions, no API calls.

How the user's command maps onto torchrun (the trainer is the FIRST container
of ``spec.template``; its ``command`` + ``args`` form the user command):

  ["python", "train.py", *a]        -> python -m stoker.operator.launch <torchrun flags> train.py *a
  ["python", "-m", "pkg.mod", *a]   -> python -m stoker.operator.launch <torchrun flags> -m pkg.mod *a
  ["python", "-u", ...] / "-c" ...  -> python -m stoker.operator.launch <torchrun flags> --no-python python -u ...
  ["/usr/bin/train", *a]            -> python3 -m stoker.operator.launch <torchrun flags> --no-python /usr/bin/train *a

`stoker.operator.launch` is torchrun (same flags, run in-process) that exits with
the failing worker's own exit code, so spec.failurePolicy.exitCodeRules see the
user's code rather than torchrun's constant 1. For images without the stoker
package, RenderConfig.launcher_image adds an init container that copies the launcher
into the pod, which then runs ``python /stoker-launcher/stoker_launch.py`` instead of
``python -m stoker.operator.launch`` (``launcher_bundle``); RenderConfig.launcher="torchrun"
uses plain ``python -m torch.distributed.run`` / ``torchrun`` (exit-code rules then see 1).

A python interpreter in the user's command (``python``, ``python3``,
``python3.11``, ``/opt/venv/bin/python``) is reused to run the launcher, so
nothing needs to be on PATH; any other program runs with ``--no-python``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from typing import Any

from stoker.common import env as E
from stoker.common import labels as L

from . import launcher_bundle as B
from . import policy_health
from .jobspec import JobView
from .podview import SPEC_HASH

CHECKPOINT_INTERVAL_SECONDS = E.CHECKPOINT_INTERVAL_SECONDS

_PYTHON_RE = re.compile(r"^python[0-9.]*$")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Operator-wide settings that shape every worker pod."""

    rendezvous_endpoint: str = "127.0.0.1:29400"  # an IP literal: no DNS needed
    rendezvous_locked: bool = False                # the gateway: the launcher presents the job's token
    operator_addr: str | None = None               # gRPC heartbeat service (later issue)
    last_call_timeout_s: int = 2                    # how long a round waits for more than MIN nodes
    join_timeout_s: int = 600
    read_timeout_s: int = 60
    torchrun_max_restarts: int = 10                 # in-place restarts per agent (scale-downs cost one)
    monitor_interval_s: float = 0.1                 # torch's default: a dead trainer is seen within it
    s3_endpoint: str | None = None                  # default AWS_ENDPOINT_URL_S3 if the secret has none
    launcher: str = "stoker"                        # "stoker" (exit codes preserved) | "torchrun"
    launcher_image: str = ""                        # copy the launcher in from this image (launcher_bundle)
    # terminationGracePeriodSeconds when the template sets none: room for a drain (checkpoint
    # and stop) when a worker pod is preempted or evicted. The launcher exits as soon as the
    # trainer has stopped, so a long grace costs nothing when there is nothing to drain.
    termination_grace_s: int = 60


# torchrun's rendezvous keep-alive for jobs with spares: (seconds between writes, writes missed).
SPARE_KEEP_ALIVE = (1, 3)


def pod_name(job: str, index: int, incarnation: int) -> str:
    return f"{job}-worker-{index}-{incarnation}"


def rendezvous_id(job: JobView, incarnation: int) -> str:
    # The uid part keeps a re-created job of the same name from meeting the
    # closed rendezvous its predecessor left in the long-lived store.
    return f"{job.namespace}-{job.name}-{job.uid[:8]}-{incarnation}"


def spec_hash(job: JobView) -> str:
    """Hash of everything that changes what a worker pod runs (not replicas)."""
    material = {
        "template": job.template,
        "nproc": job.nproc_per_node,
        "nnodes": [job.min_replicas, job.max_replicas],
        "checkpoint": job.checkpoint,
        "scheduling": job.scheduling,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]


def selector(job_name: str) -> str:
    return f"{L.JOB_NAME}={job_name}"


def job_labels(job_name: str) -> dict[str, str]:
    return {
        L.APP_NAME: "stoker",
        L.APP_INSTANCE: job_name,
        L.APP_COMPONENT: L.COMPONENT_WORKER,
        L.APP_MANAGED_BY: L.MANAGED_BY_VALUE,
        L.APP_PART_OF: "stoker",
        L.JOB_NAME: job_name,
    }


LAUNCHERS = {"stoker": "stoker.operator.launch", "torchrun": "torch.distributed.run"}


def launcher_command(user_cmd: list[str], flags: list[str], launcher: str = "stoker",
                     bundled: bool = False) -> list[str]:
    """Wrap the user's command in torchrun (see the module docstring); ``bundled``: the
    launcher comes from the pod's launcher volume, not from the image."""
    if not user_cmd:
        raise ValueError("spec.template.spec.containers[0].command is empty: set it to your training program")
    run = [f"{B.MOUNT}/{B.ENTRY}"] if bundled and launcher == "stoker" else ["-m", LAUNCHERS[launcher]]
    exe, rest = user_cmd[0], list(user_cmd[1:])
    if _PYTHON_RE.match(os.path.basename(exe)):
        head = [exe, *run, *flags]
        if len(rest) >= 2 and rest[0] == "-m":
            return [*head, "-m", *rest[1:]]
        if rest and not rest[0].startswith("-"):
            return [*head, *rest]
        return [*head, "--no-python", exe, *rest]
    head = ["torchrun"] if launcher == "torchrun" else ["python3", *run]
    return [*head, *flags, "--no-python", exe, *rest]


def add_launcher_bundle(spec: dict[str, Any], trainer: dict[str, Any], image: str) -> None:
    """The init container that copies the launcher into an emptyDir the trainer mounts
    read-only (``launcher_bundle``): worker images need Python and torch only."""
    spec["volumes"] = [*(spec.get("volumes") or []), {"name": B.VOLUME, "emptyDir": {"sizeLimit": "16Mi"}}]
    trainer["volumeMounts"] = [*(trainer.get("volumeMounts") or []),
                               {"name": B.VOLUME, "mountPath": B.MOUNT, "readOnly": True}]
    init = {
        "name": B.CONTAINER, "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "stoker.operator.launcher_bundle", B.MOUNT],
        "volumeMounts": [{"name": B.VOLUME, "mountPath": B.MOUNT}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }
    spec["initContainers"] = [init, *(spec.get("initContainers") or [])]


def torchrun_flags(job: JobView, incarnation: int, cfg: RenderConfig) -> list[str]:
    rdzv_conf = ",".join([
        "is_host=false",  # never host the store in a worker: the operator does
        f"last_call_timeout={cfg.last_call_timeout_s}",
        f"join_timeout={cfg.join_timeout_s}",
        f"read_timeout={cfg.read_timeout_s}",
        *spare_keep_alive(job),
    ])
    return [
        f"--nnodes={job.min_replicas}:{job.max_replicas}",
        f"--nproc-per-node={job.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={cfg.rendezvous_endpoint}",
        f"--rdzv-id={rendezvous_id(job, incarnation)}",
        f"--rdzv-conf={rdzv_conf}",
        # Kubernetes expands $(VAR) from the container's env: the pod's own IP,
        # so the process-group store of rank 0 is reachable without DNS.
        f"--local-addr=$({E.POD_IP})",
        # Elastic jobs: torchrun needs in-place restarts to carry on when membership changes.
        # Fixed-size jobs: a failed trainer restarts inside its pod spec.failurePolicy.
        # inPlaceRestarts times, each reported to the operator by the launcher (incident,
        # budget; launch_inplace); then the pod fails and the job restarts as a new incarnation.
        f"--max-restarts={cfg.torchrun_max_restarts if job.elastic else in_place_restarts(job, cfg)}",
        f"--monitor-interval={cfg.monitor_interval_s:g}",
    ]


def spare_keep_alive(job: JobView) -> list[str]:
    """A job with hot spares: a lost node's agent leaves the rendezvous after ``SPARE_KEEP_ALIVE``
    (interval, attempts) instead of torch's 5 s x 3: the survivors and the spare wait for that before
    their new round completes. Each agent writes the shared state once per interval, so only jobs
    with spares pay it."""
    if not job.hot_spares:
        return []
    interval, attempts = SPARE_KEEP_ALIVE
    return [f"keep_alive_interval={interval}", f"keep_alive_max_attempt={attempts}"]


def in_place_restarts(job: JobView, cfg: RenderConfig) -> int:
    """A fixed-size job's in-place restarts per pod: only with Stoker's launcher, which reports
    them (plain torchrun would restart silently), and only where there is an operator to tell."""
    if job.elastic or cfg.launcher != "stoker" or not cfg.operator_addr:
        return 0
    return job.in_place_restarts


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _secret_env(name: str, secret: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": name}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def worker_env(job: JobView, index: int, incarnation: int, cfg: RenderConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": E.JOB_NAME, "value": job.name},
        {"name": E.JOB_NAMESPACE, "value": job.namespace},
        {"name": E.JOB_UID, "value": job.uid},
        _field_env(E.POD_NAME, "metadata.name"),
        _field_env(E.POD_UID, "metadata.uid"),
        _field_env(E.POD_IP, "status.podIP"),
        _field_env(E.NODE_NAME, "spec.nodeName"),
        {"name": E.REPLICA_INDEX, "value": str(index)},
        {"name": E.INCARNATION, "value": str(incarnation)},
        # One agent-side store per rendezvous round, hosted by rank 0's worker at
        # MASTER_ADDR=--local-addr; survives rank 0 changing on scale-down.
        {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if cfg.operator_addr:
        env.append({"name": E.OPERATOR_ADDR, "value": cfg.operator_addr})
    if cfg.rendezvous_locked:
        env.append({"name": E.RENDEZVOUS_LOCKED, "value": "1"})
    if in_place_restarts(job, cfg):
        env.append({"name": E.IN_PLACE_RESTARTS, "value": str(in_place_restarts(job, cfg))})
    if job.hot_spares:
        env.append({"name": E.SPARES, "value": str(job.hot_spares)})
    ck = job.checkpoint
    if ck:
        env.append({"name": E.CHECKPOINT_URI, "value": str(ck["uri"])})
        if ck.get("intervalSteps") is not None:
            env.append({"name": E.CHECKPOINT_INTERVAL_STEPS, "value": str(ck["intervalSteps"])})
        if ck.get("intervalSeconds") is not None:
            env.append({"name": CHECKPOINT_INTERVAL_SECONDS, "value": str(ck["intervalSeconds"])})
        env.append({"name": E.CHECKPOINT_KEEP, "value": str(ck.get("keep", 3))})
        if ck.get("memoryIntervalSteps") is not None:
            env.append({"name": E.CHECKPOINT_MEMORY_INTERVAL_STEPS, "value": str(ck["memoryIntervalSteps"])})
        secret = (ck.get("credentialsSecretRef") or {}).get("name")
        if secret:
            env.append(_secret_env(E.S3_ACCESS_KEY, secret))
            env.append(_secret_env(E.S3_SECRET_KEY, secret))
            env.append(_secret_env(E.S3_REGION, secret, optional=True))
            if cfg.s3_endpoint:
                env.append({"name": E.S3_ENDPOINT, "value": cfg.s3_endpoint})
            else:
                env.append(_secret_env(E.S3_ENDPOINT, secret, optional=True))
        elif cfg.s3_endpoint:
            env.append({"name": E.S3_ENDPOINT, "value": cfg.s3_endpoint})
    health = policy_health.worker_env(job.health, job.status)
    if health:
        env.append({"name": E.HEALTH, "value": health})
    return env


def render_pod(job: JobView, index: int, incarnation: int, cfg: RenderConfig) -> dict[str, Any]:
    """The worker pod `index` of `incarnation`, owned by the job."""
    tmpl = copy.deepcopy(dict(job.template))
    tmeta = tmpl.get("metadata") or {}
    spec = copy.deepcopy(tmpl.get("spec") or {})
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError("spec.template.spec.containers is empty: add the trainer container")
    trainer = containers[0]
    user_cmd = list(trainer.get("command") or []) + list(trainer.get("args") or [])
    bundled = bool(cfg.launcher_image) and cfg.launcher == "stoker"
    trainer["command"] = launcher_command(user_cmd, torchrun_flags(job, incarnation, cfg), cfg.launcher, bundled)
    trainer.pop("args", None)
    if bundled:
        add_launcher_bundle(spec, trainer, cfg.launcher_image)
    # A failed trainer's (or init container's) last log lines become its termination message
    # (incidents, the job's message).
    for c in (trainer, *(spec.get("initContainers") or [])):
        c.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    ours = worker_env(job, index, incarnation, cfg)
    spec.setdefault("terminationGracePeriodSeconds", cfg.termination_grace_s)
    ours.append({"name": E.TERMINATION_GRACE, "value": str(spec["terminationGracePeriodSeconds"])})
    our_names = {e["name"] for e in ours}
    user_env = [e for e in trainer.get("env") or [] if e.get("name") not in our_names]
    # The user may read the pod IP under any name, but $(STOKER_POD_IP) must be
    # defined before it is referenced, so ours come first.
    trainer["env"] = ours + user_env
    spec["restartPolicy"] = "Never"
    sched = job.scheduling
    if sched.get("schedulerName"):
        spec["schedulerName"] = sched["schedulerName"]
    if sched.get("priorityClassName"):
        spec["priorityClassName"] = sched["priorityClassName"]

    name = pod_name(job.name, index, incarnation)
    labels = dict(tmeta.get("labels") or {})
    labels.update(job_labels(job.name))
    labels[L.REPLICA_INDEX] = str(index)
    labels[L.INCARNATION] = str(incarnation)
    # scheduling.queueName is no pod label: Kueue admits the job's one Workload (policy_kueue.py), and
    # its queue label on pods would make Kueue's pod integration, where enabled, queue each pod alone.
    annotations = dict(tmeta.get("annotations") or {})
    annotations[L.RDZV_ID] = rendezvous_id(job, incarnation)
    annotations[SPEC_HASH] = spec_hash(job)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


def owner_reference(job: JobView) -> dict[str, Any]:
    return {
        "apiVersion": f"{L.GROUP}/{L.VERSION}",
        "kind": L.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
