"""On-call actions on one TrainingJob: `checkpoint`, `restart`, `suspend`,
`resume`, `scale`.

`checkpoint` and `restart` (whole job) set a request annotation
(stoker.common.labels.CHECKPOINT_REQUEST / RESTART_REQUEST = a fresh request
id) that the operator acts on; `restart --rank N` (global rank) or `--replica I`
(replica index) deletes that worker's pod
(the operator replaces it). `suspend`/`resume` patch spec.runPolicy.suspend (`resume` of a job paused by
spec.health sets the restart request: nothing in its spec holds it);
`scale` uses the scale subresource after checking the elastic range."""
from __future__ import annotations

import datetime as dt
import sys
import time
import uuid

from stoker.common import labels as L

from . import common, facts, workers
from .kubeclient import EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, CliError, Kube, job_path
from .output import dumps

FINISHED = ("Succeeded", "Failed")


def request_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def annotate(kube: Kube, namespace: str, name: str, key: str, value: str) -> dict:
    return kube.patch(job_path(namespace, name), {"metadata": {"annotations": {key: value}}})


def _report(args, doc: dict, text: str) -> None:
    print(dumps(doc, args.output) if args.output != "table" else text)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ checkpoint
def request_checkpoint(kube: Kube, namespace: str, name: str, job: dict | None = None) -> tuple[str, dict]:
    """Set the checkpoint-request annotation; returns (id, baseline for checkpoint_done)."""
    job = job or kube.get_job(namespace, name)
    phase = (job.get("status") or {}).get("phase")
    if phase in FINISHED or phase == "Suspended":
        raise CliError(f"job {name} is {phase}: there is no running training to checkpoint")
    rid = request_id()
    baseline = facts.checkpoint_baseline(job)
    annotate(kube, namespace, name, L.CHECKPOINT_REQUEST, rid)
    return rid, baseline


def wait_checkpoint(kube: Kube, namespace: str, name: str, rid: str, baseline: dict, timeout: float,
                    interval: float = 1.0, progress=_progress) -> dict:
    """Poll until status.lastCheckpoint passes the request (facts.checkpoint_done);
    CliError(EXIT_TIMEOUT) with what is known when it does not in time."""
    start = time.monotonic()
    last_note = -1e9
    acked = False
    want = baseline.get("requestStep")
    while True:
        job = kube.get_job(namespace, name)
        ann = (job.get("metadata") or {}).get("annotations") or {}
        acked = acked or ann.get(L.CHECKPOINT_REQUEST_HANDLED) == rid
        ck = (job.get("status") or {}).get("lastCheckpoint") or {}
        if facts.checkpoint_done(baseline, job):
            return job
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            seen = f"step {ck['step']}" if ck.get("step") is not None else "none"
            why = ("the operator acknowledged the request but no newer checkpoint was committed; check the "
                   f"workers (`stoker logs {name}`) and the bucket (`stoker doctor {name}`)" if acked else
                   f"the operator has not acknowledged it (annotation {L.CHECKPOINT_REQUEST_HANDLED} is not "
                   f"{rid}): is an operator with checkpoint-request support running for namespace {namespace}? "
                   f"(`stoker doctor {name}`)")
            raise CliError(f"timed out after {timeout:g}s waiting for job {name} to checkpoint (request {rid}): "
                           f"status.lastCheckpoint is {seen}"
                           f"{f', wanted a checkpoint at step >= {want}' if want is not None else ''}; {why}",
                           EXIT_TIMEOUT)
        if elapsed - last_note >= 5:
            progress(f"waiting for job {name} to checkpoint: last checkpoint "
                     f"{'step ' + str(ck['step']) if ck.get('step') is not None else 'none'}"
                     f"{f', want step >= {want}' if want is not None else ''}"
                     f"{', request acknowledged' if acked else ''} ({elapsed:.0f}s/{timeout:g}s)")
            last_note = elapsed
        time.sleep(interval)


def cmd_checkpoint(args, kube: Kube) -> int:
    rid, baseline = request_checkpoint(kube, args.namespace, args.job)
    doc = {"job": args.job, "namespace": args.namespace, "annotation": L.CHECKPOINT_REQUEST, "requestId": rid,
           "requestedAtStep": baseline["requestStep"], "previousCheckpointStep": baseline["checkpointStep"]}
    if not args.wait:
        _report(args, doc, f"checkpoint requested for job {args.job} (request {rid}); "
                           f"follow it with `stoker checkpoint {args.job} --wait` or `stoker describe {args.job}`")
        return EXIT_OK
    _progress(f"checkpoint requested for job {args.job} (request {rid})")
    job = wait_checkpoint(kube, args.namespace, args.job, rid, baseline, args.timeout)
    ck = job["status"]["lastCheckpoint"]
    doc["checkpoint"] = {"step": ck.get("step"), "time": ck.get("time"), "uri": ck.get("uri")}
    _report(args, doc, f"job {args.job} checkpointed at step {ck.get('step')}"
                       f"{' -> ' + ck['uri'] if ck.get('uri') else ''}")
    return EXIT_OK


# --------------------------------------------------------------------- restart
def cmd_restart(args, kube: Kube) -> int:
    job = kube.get_job(args.namespace, args.job)
    if args.rank is None and args.replica is None:
        rid = request_id()
        annotate(kube, args.namespace, args.job, L.RESTART_REQUEST, rid)
        doc = {"job": args.job, "namespace": args.namespace, "action": "restart-job",
               "annotation": L.RESTART_REQUEST, "requestId": rid,
               "incarnation": (job.get("status") or {}).get("incarnation", 0)}
        _report(args, doc, f"restart requested for job {args.job} (request {rid}); the operator starts a new "
                           f"incarnation (watch with `stoker get {args.job}`)")
        return EXIT_OK
    pods = workers.select(job, kube.job_pods(args.namespace, args.job), args.rank, args.replica)
    if not pods:
        raise CliError(f"job {args.job} has no worker pod for rank {args.rank} right now", EXIT_NOT_FOUND)
    pod = pods[0]["metadata"]["name"]
    kube.delete(f"/api/v1/namespaces/{args.namespace}/pods/{pod}")
    which = f"rank {args.rank}" if args.rank is not None else f"replica {args.replica}"
    doc = {"job": args.job, "namespace": args.namespace, "action": "delete-worker", "rank": args.rank,
           "replica": args.replica, "pod": pod}
    _report(args, doc, f"deleted pod {pod} ({which} of job {args.job}); the operator replaces it")
    return EXIT_OK


# ------------------------------------------------------------- suspend/resume
def _set_suspend(args, kube: Kube, value: bool) -> int:
    job = kube.get_job(args.namespace, args.job)
    was = bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
    verb = "suspended" if value else "resumed"
    if was != value:
        kube.patch(job_path(args.namespace, args.job), {"spec": {"runPolicy": {"suspend": value}}})
    doc = {"job": args.job, "namespace": args.namespace, "suspend": value, "changed": was != value}
    _report(args, doc, f"job {args.job} {verb}" if was != value else f"job {args.job} is already {verb}")
    return EXIT_OK


def cmd_suspend(args, kube: Kube) -> int:
    return _set_suspend(args, kube, True)


PAUSED = "TrainingPaused"  # stoker.operator.detection.TRAINING_PAUSED: spec.health paused the job


def cmd_resume(args, kube: Kube) -> int:
    """Unsuspend; a job that spec.health paused (phase Suspended, reason TrainingPaused) resumes through a
    restart request, since nothing in its spec holds it."""
    job = kube.get_job(args.namespace, args.job)
    status = job.get("status") or {}
    suspended = bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
    if status.get("phase") == "Suspended" and status.get("reason") == PAUSED and not suspended:
        rid = request_id()
        annotate(kube, args.namespace, args.job, L.RESTART_REQUEST, rid)
        doc = {"job": args.job, "namespace": args.namespace, "action": "resume-paused", "requestId": rid}
        _report(args, doc, f"job {args.job} was paused by spec.health: resume requested (request {rid}); it "
                           "restarts from the newest checkpoint before the anomaly")
        return EXIT_OK
    return _set_suspend(args, kube, False)


# ----------------------------------------------------------------------- scale
def cmd_scale(args, kube: Kube) -> int:
    job = kube.get_job(args.namespace, args.job)
    err = facts.scale_error(job, args.replicas)
    if err:
        raise CliError(err)
    before = (job.get("spec") or {}).get("replicas")
    kube.patch(job_path(args.namespace, args.job) + "/scale", {"spec": {"replicas": args.replicas}})
    doc = {"job": args.job, "namespace": args.namespace, "replicas": args.replicas, "previousReplicas": before}
    _report(args, doc, f"job {args.job} scaled from {before} to {args.replicas} replicas")
    return EXIT_OK


def add_parser(sub) -> None:
    p = common.add(sub, "checkpoint", cmd_checkpoint,
                   f"ask a job to checkpoint now (annotation {L.CHECKPOINT_REQUEST}; the operator sends CHECKPOINT_NOW)")
    p.add_argument("job")
    p.add_argument("--wait", action="store_true", help="wait until status.lastCheckpoint passes the request")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (exit code 5 when it gives up)")
    p = common.add(sub, "restart", cmd_restart,
                   f"restart a job (annotation {L.RESTART_REQUEST}) or one worker (--rank N / --replica I: "
                   f"delete its pod)")
    p.add_argument("job")
    workers.add_arguments(p, "delete")
    p = common.add(sub, "suspend", cmd_suspend, "suspend a job (spec.runPolicy.suspend=true: workers are deleted)")
    p.add_argument("job")
    p = common.add(sub, "resume", cmd_resume, "resume a suspended job (spec.runPolicy.suspend=false)")
    p.add_argument("job")
    p = common.add(sub, "scale", cmd_scale, "change the number of workers of an elastic job (within min/max)")
    p.add_argument("job")
    p.add_argument("--replicas", type=int, required=True)
