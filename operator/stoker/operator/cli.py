"""`stoker operator …` subcommands."""
from __future__ import annotations

import argparse
import os
import sys

from .config import Config, to_env

# What `stoker[operator]` adds to the torch-free base (pyproject.toml).
OPERATOR_PACKAGES = ("kopf", "kubernetes", "prometheus_client", "grpc", "google")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("operator", help="run the TrainingJob operator")
    osub = p.add_subparsers(dest="operator_command", metavar="COMMAND")

    run = osub.add_parser("run", help="reconcile TrainingJobs into elastic torchrun worker pods")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch only this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    d = Config()
    run.add_argument("--kubeconfig", default=None)
    run.add_argument("--metrics-port", type=int, default=d.metrics_port, help="Prometheus endpoint; 0 disables")
    run.add_argument("--health-port", type=int, default=d.health_port, help="liveness endpoint /healthz; 0 disables")
    run.add_argument("--rendezvous-port", type=int, default=d.rendezvous_port,
                     help="port of the shared c10d store the operator hosts; 0: host none")
    run.add_argument("--rendezvous-advertise-address", default=d.rendezvous_advertise_address,
                     help="IP literal workers use to reach the store (in a cluster: the operator Service's ClusterIP)")
    run.add_argument("--resync-seconds", type=float, default=d.resync_seconds,
                     help="re-check every job this often (deadlines, TTL, backoff)")
    run.add_argument("--last-call-timeout", type=int, default=d.last_call_timeout_seconds,
                     help="seconds a rendezvous round waits for more than minReplicas workers")
    run.add_argument("--torchrun-max-restarts", type=int, default=d.torchrun_max_restarts,
                     help="in-place restarts per torchrun agent (each scale-down costs one)")
    run.add_argument("--peering", default=None, metavar="NAME",
                     help="kopf peering object: replicas with the same NAME never act together (default: standalone)")
    run.add_argument("--peering-priority", type=int, default=d.peering_priority,
                     help="the highest live priority acts, the others wait (0: a random priority)")
    run.add_argument("--peering-lifetime", type=int, default=d.peering_lifetime_seconds,
                     help="seconds after which a silent peer is considered gone")
    run.add_argument("--s3-endpoint", default=None, help="AWS_ENDPOINT_URL_S3 for workers whose Secret has none")
    run.add_argument("--heartbeat-address", default=None,
                     help="host:port of the heartbeat service given to workers (unset: no heartbeat service)")
    run.add_argument("--heartbeat-listen", default=None,
                     help="where the heartbeat service binds (default 0.0.0.0:<port of --heartbeat-address>)")
    run.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval_seconds,
                     help="seconds between a worker's heartbeats")
    run.add_argument("--startup-timeout", type=int, default=d.startup_timeout_seconds,
                     help="seconds an incarnation may take to its first step before it counts as hung")
    run.add_argument("--max-infra-restarts", type=int, default=d.max_infra_restarts,
                     help="infrastructure restarts (which never spend maxRestarts) before a job fails anyway")
    run.add_argument("--node-report-after", type=int, default=d.node_report_after,
                     help="job failures on one node within an hour before it is reported (Event, metric)")
    run.add_argument("--cordon-after", type=int, default=d.cordon_after,
                     help="job failures on one node within an hour before it is cordoned (0: never)")
    run.add_argument("--launcher", choices=["stoker", "torchrun"], default=d.launcher,
                     help="stoker: torchrun that exits with the failing worker's exit code (needs the stoker "
                          "package in the image); torchrun: plain torchrun")
    run.add_argument("--max-workers", type=int, default=d.max_workers)
    run.add_argument("--log-level", default=d.log_level)
    run.set_defaults(func=_run)

    rdzv = osub.add_parser("rendezvous", help="host only the shared c10d rendezvous store (sidecar mode)")
    rdzv.add_argument("--port", type=int, default=d.rendezvous_port)
    rdzv.set_defaults(func=_rendezvous)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        namespaces=tuple(args.namespace),
        kubeconfig=args.kubeconfig,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        rendezvous_port=args.rendezvous_port,
        rendezvous_advertise_address=args.rendezvous_advertise_address,
        resync_seconds=args.resync_seconds,
        last_call_timeout_seconds=args.last_call_timeout,
        torchrun_max_restarts=args.torchrun_max_restarts,
        peering=args.peering,
        peering_priority=args.peering_priority,
        peering_lifetime_seconds=args.peering_lifetime,
        s3_endpoint=args.s3_endpoint,
        heartbeat_address=args.heartbeat_address,
        heartbeat_listen=args.heartbeat_listen,
        heartbeat_interval_seconds=args.heartbeat_interval,
        startup_timeout_seconds=args.startup_timeout,
        max_infra_restarts=args.max_infra_restarts,
        node_report_after=args.node_report_after,
        cordon_after=args.cordon_after,
        launcher=args.launcher,
        max_workers=args.max_workers,
        log_level=args.log_level,
    )


def _run(args: argparse.Namespace) -> int:
    os.environ.update(to_env(config_from_args(args)))
    sys.modules.pop("stoker.operator.main", None)
    try:
        from . import main  # reads the environment at import
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in OPERATOR_PACKAGES:
            print(f"stoker operator: the Python package {exc.name!r} is not installed; the operator needs the "
                  f"`operator` extra: pip install 'stoker[operator]'", file=sys.stderr)
            return 1
        raise

    return main.run()


def _rendezvous(args: argparse.Namespace) -> int:
    from . import rendezvous

    return rendezvous.main(["--port", str(args.port)])
