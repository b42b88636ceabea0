"""`stoker logs JOB [--rank N | --replica I] [-f] [--tail N]`: the trainer container's log
of each current worker, through the pods/log API (works for kwok-less real nodes
and for process nodes, whose agent serves the kubelet log endpoint). With
several workers every line is prefixed ``[replica I]`` (the pod; see workers.py for
replica index vs global rank); ``-f`` follows all of them at once."""
from __future__ import annotations

import sys
import threading

from . import common, facts, workers
from .kubeclient import EXIT_NOT_FOUND, EXIT_OK, CliError, Kube


def trainer_container(pod: dict) -> str:
    return ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name", "")


def cmd_logs(args, kube: Kube) -> int:
    job = kube.get_job(args.namespace, args.job)  # not found -> near names
    pods = workers.select(job, kube.job_pods(args.namespace, args.job), args.rank, args.replica)
    if not pods:
        raise CliError(f"job {args.job} has no worker pods right now (see `stoker describe {args.job}`)", EXIT_NOT_FOUND)
    prefix = len(pods) > 1 or args.prefix
    lock = threading.Lock()
    errors: list[str] = []
    out = sys.stdout.buffer

    def one(pod: dict) -> None:
        name = pod["metadata"]["name"]
        tag = f"[replica {facts.worker_index(pod)}] ".encode() if prefix else b""
        query = {"container": trainer_container(pod), "follow": args.follow, "tailLines": args.tail,
                 "previous": args.previous or None}
        try:
            for line in kube.stream_lines(f"/api/v1/namespaces/{args.namespace}/pods/{name}/log", query):
                with lock:
                    out.write(tag + line)
                    if args.follow:
                        out.flush()
        except CliError as e:
            errors.append(f"{name}: {e}")

    if len(pods) == 1:
        one(pods[0])
    else:
        threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in pods]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    out.flush()
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else EXIT_OK


def add_parser(sub) -> None:
    p = common.add(sub, "logs", cmd_logs, "trainer logs of a job's workers (all, or --rank N / --replica I)")
    p.add_argument("job")
    workers.add_arguments(p, "only")
    p.add_argument("-f", "--follow", action="store_true", help="stream new lines until the workers exit")
    p.add_argument("--tail", type=int, default=None, help="last N lines of each worker")
    p.add_argument("-p", "--previous", action="store_true", help="the previous (restarted) container instance")
    p.add_argument("--prefix", action="store_true", help="prefix lines with [replica I] even for one worker")
