"""Global flags of the on-call commands and the shell that runs them: build the
client, call the command, turn :class:`CliError` into a message on stderr and
its exit code.

Exit codes (all on-call commands): 0 ok, 1 error (API refused, a doctor check
failed), 2 usage, 3 not found (job/node/rank), 4 no cluster / unreachable /
credentials rejected, 5 timed out waiting (``checkpoint --wait``)."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Callable

from .kubeclient import EXIT_ERROR, CliError, Kube
from .output import FORMATS, use_colour


def global_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cluster and output")
    g.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    g.add_argument("--context", default=None, help="kubeconfig context")
    g.add_argument("-n", "--namespace", default=None, help="namespace (default: the context's, else 'default')")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="all namespaces")
    g.add_argument("-o", "--output", choices=FORMATS, default="table", help="output format")
    return p


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def connect(args) -> Kube:
    kube = Kube(args.kubeconfig, args.context)
    if not args.namespace:
        args.namespace = kube.namespace
    return kube


def runner(fn: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    """Wrap ``fn(args, kube) -> int`` as an argparse ``func``."""

    def run(args: argparse.Namespace) -> int:
        args.colour = use_colour(sys.stdout)
        kube = None
        try:
            kube = connect(args)
            return int(fn(args, kube) or 0)
        except CliError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.code
        except BrokenPipeError:  # `stoker get | head`
            return 0
        except Exception as e:  # noqa: BLE001 - a bug, but say what happened without a traceback wall
            if getattr(args, "debug", False):
                raise
            print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            if kube:
                kube.close()

    return run


def add(sub, name: str, fn: Callable[..., int], help: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[global_flags()], help=help, description=description or help,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=runner(fn))
    return p
