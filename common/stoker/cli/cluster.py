"""`stoker cluster up|down|status`: a local control plane + S3 server for development.

The cluster code is test infrastructure that lives in the source checkout
(``tests/cluster/local.py``); this module finds the checkout and drives it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = Path("tests") / "cluster" / "local.py"


def find_repo_root() -> Path | None:
    """$STOKER_REPO, else the first directory containing tests/cluster/local.py
    walking up from the current directory, then from this file."""
    env = os.environ.get("STOKER_REPO")
    if env:
        root = Path(env).expanduser().resolve()
        return root if (root / MARKER).is_file() else None
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if (d / MARKER).is_file():
                return d
    return None


def load_local_module():
    root = find_repo_root()
    if root is None:
        where = os.environ.get("STOKER_REPO")
        hint = (f"STOKER_REPO={where} has no {MARKER}" if where else
                f"no {MARKER} above {Path.cwd()} or above {Path(__file__).resolve().parent}")
        raise SystemExit(
            f"stoker cluster: needs a Stoker source checkout ({hint}). "
            "Run it inside the checkout or set STOKER_REPO=/path/to/checkout."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    return importlib.import_module("tests.cluster.local")


def _cluster(args: argparse.Namespace):
    local = load_local_module()
    return local, local.LocalCluster(args.dir)


def cmd_up(args: argparse.Namespace) -> int:
    local, c = _cluster(args)
    try:
        c.up(kwok_nodes=args.kwok_nodes, process_nodes=args.process_nodes, gpus=args.gpus)
    except local.ClusterError as exc:
        print(f"stoker cluster up: {exc}", file=sys.stderr)
        return 1
    print(c.status_table())
    print()
    print(c.info())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _, c = _cluster(args)
    c.down()
    left = c.leftover_pids()
    if left:
        print(f"stoker cluster down: processes still running: {left}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, c = _cluster(args)
    if not c.config_file.exists():
        print(f"no cluster in {c.state_dir} (start one with `stoker cluster up`)")
        return 3
    print(c.status_table())
    if c.is_up():
        print()
        print(c.info())
        return 0
    return 3


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="local control plane + S3 for development and tests",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dir", default=None,
                        help="state directory (default: $STOKER_HOME or ~/.stoker/cluster)")

    up = csub.add_parser("up", help="start (or finish starting) the local cluster; idempotent")
    common(up)
    up.add_argument("--kwok-nodes", type=int, default=0, metavar="N",
                    help="simulated GPU nodes (kwok) to create")
    up.add_argument("--process-nodes", type=int, default=0, metavar="N",
                    help="nodes whose pods run as local processes (tests.nodeagent)")
    up.add_argument("--gpus", type=int, default=8, metavar="N", help="GPUs per node (default 8)")
    up.set_defaults(func=cmd_up)

    down = csub.add_parser("down", help="stop every process of the local cluster (data is kept)")
    common(down)
    down.set_defaults(func=cmd_down)

    st = csub.add_parser("status", help="show the components and their state")
    common(st)
    st.set_defaults(func=cmd_status)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
