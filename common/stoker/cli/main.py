"""Entry point of `stoker` and of the kubectl plugin `kubectl-stoker`.

Each subcommand group lives in its own module that exposes
``add_parser(subparsers)``; the parser it adds sets ``func`` to a callable taking
the parsed args and returning an exit code. Modules are imported lazily so that
`stoker --help` stays fast and never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) for each subcommand group, in help order.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("stoker.cli.cluster", "cluster"),
    ("stoker.operator.cli", "operator"),
    # On-call commands (kubeconfig-based, torch-free); exit codes in stoker.cli.common.
    ("stoker.cli.jobs", "get / describe / top"),
    ("stoker.cli.logs", "logs"),
    ("stoker.cli.actions", "checkpoint / restart / suspend / resume / scale"),
    ("stoker.cli.drain", "drain"),
    ("stoker.cli.doctor", "doctor"),
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    prog = "kubectl stoker" if sys.argv and sys.argv[0].endswith("kubectl-stoker") else "stoker"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Stoker: elastic PyTorch training that survives failures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, _name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a group whose module is not there yet
            if exc.name and module.startswith(exc.name):
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
