"""`stoker cluster up|down|status`: a local control plane + S3 server for development.

The cluster itself is ``stoker.devcluster`` (shipped with the distribution): etcd and the
Kubernetes control plane built from pinned Go modules on first use (needs Go), MinIO,
kwok nodes and process nodes. With no flags, ``up`` starts 2 process nodes so that the
README's examples run.
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_PROCESS_NODES = 2


CLUSTER_EXTRA = "pip install 'stoker[cluster]'"


def load_local_module():
    try:
        from stoker.devcluster import local
    except ImportError as exc:  # `cryptography` or `kubernetes` missing: the base install has neither
        missing = f"the Python package {exc.name!r} is" if exc.name else "a Python package is"
        raise SystemExit(f"stoker cluster: {missing} not installed ({exc}); the local dev cluster needs the "
                         f"`cluster` extra: {CLUSTER_EXTRA}") from exc
    return local


def _cluster(args: argparse.Namespace):
    local = load_local_module()
    return local, local.LocalCluster(args.dir)


def cmd_up(args: argparse.Namespace) -> int:
    local, c = _cluster(args)
    try:
        c.up(kwok_nodes=args.kwok_nodes, process_nodes=args.process_nodes, gpus=args.gpus,
             real_nodes=args.real_nodes)
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
    up.add_argument("--process-nodes", type=int, default=DEFAULT_PROCESS_NODES, metavar="N",
                    help="nodes whose pods run as local processes (stoker.devcluster.nodeagent); "
                         f"default {DEFAULT_PROCESS_NODES}, so the README's examples run")
    up.add_argument("--real-nodes", type=int, default=0, metavar="N",
                    help="real nodes: kubelet + containerd + kube-proxy, each in its own network "
                         "namespace (root, Linux; packages from "
                         "devcluster/stoker/devcluster/install-node-packages.sh)")
    up.add_argument("--gpus", type=int, default=8, metavar="N", help="GPUs per node (default 8)")
    up.set_defaults(func=cmd_up)

    down = csub.add_parser("down", help="stop every process of the local cluster (data is kept)")
    common(down)
    down.set_defaults(func=cmd_down)

    st = csub.add_parser("status", help="show the components and their state")
    common(st)
    st.set_defaults(func=cmd_status)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
