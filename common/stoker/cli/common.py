"""Global flags of the on-call commands and the shell that runs them: build the
client, call the command, turn :class:`CliError` into a message on stderr and
its exit code.

Exit codes (all on-call commands): 0 ok, 1 error (API refused, a doctor check
failed), 2 usage, 3 not found (job/node/rank), 4 no cluster / unreachable /
credentials rejected, 5 timed out waiting (``checkpoint --wait``)."""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from typing import Callable

from .kubeclient import EXIT_ERROR, CliError, Kube
from .output import FORMATS, use_colour

DEFAULT_REQUEST_TIMEOUT = 15.0


def request_timeout(text: str) -> float | None:
    """kubectl's --request-timeout: seconds, or a duration with a unit (30s, 2m, 1h); 0 waits forever."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid --request-timeout {text!r}: use seconds or a duration like 30s, 2m, 1h")
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return seconds or None


def global_flags(formats: tuple[str, ...] = FORMATS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cluster and output")
    g.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    g.add_argument("--context", default=None, help="kubeconfig context")
    g.add_argument("-n", "--namespace", default=None, help="namespace (default: the context's, else 'default')")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="all namespaces")
    g.add_argument("-o", "--output", choices=formats, default="table", help="output format")
    g.add_argument("--request-timeout", type=request_timeout, default=DEFAULT_REQUEST_TIMEOUT, metavar="DURATION",
                   help=f"give up on one API request after this long (seconds, or 30s, 2m; 0: never; "
                        f"default {DEFAULT_REQUEST_TIMEOUT:g}s)")
    return p


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def connect(args) -> Kube:
    kube = Kube(args.kubeconfig, args.context,
                request_timeout=getattr(args, "request_timeout", DEFAULT_REQUEST_TIMEOUT))
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


def add(sub, name: str, fn: Callable[..., int], help: str, description: str | None = None,
        formats: tuple[str, ...] = FORMATS) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[global_flags(formats)], help=help, description=description or help,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=runner(fn))
    return p
