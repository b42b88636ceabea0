"""`stoker operator …` subcommands."""
from __future__ import annotations

import argparse
import sys

from . import config

# What `stoker[operator]` adds to the torch-free base (pyproject.toml).
OPERATOR_PACKAGES = ("kopf", "kubernetes", "prometheus_client", "grpc", "google")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("operator", help="run the TrainingJob operator")
    osub = p.add_subparsers(dest="operator_command", metavar="COMMAND")

    run = osub.add_parser("run", help="reconcile TrainingJobs into elastic torchrun worker pods")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    config.add_arguments(run, into={"namespaces": scope})
    run.set_defaults(func=_run)

    rdzv = osub.add_parser("rendezvous", help="host only the shared c10d rendezvous store (sidecar mode)")
    rdzv.add_argument("--port", type=int, default=config.Config().rendezvous_port)
    rdzv.set_defaults(func=_rendezvous)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def config_from_args(args: argparse.Namespace) -> config.Config:
    return config.from_args(args)


def _run(args: argparse.Namespace) -> int:
    try:
        from . import main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in OPERATOR_PACKAGES:
            print(f"stoker operator: the Python package {exc.name!r} is not installed; the operator needs the "
                  f"`operator` extra: pip install 'stoker[operator]'", file=sys.stderr)
            return 1
        raise

    return main.run(config.from_args(args))


def _rendezvous(args: argparse.Namespace) -> int:
    from . import rendezvous

    return rendezvous.main(["--port", str(args.port)])
