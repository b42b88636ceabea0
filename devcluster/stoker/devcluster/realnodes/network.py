"""The node network: one bridge on the host per cluster (its own /24, nothing else of the
host's is touched), one network namespace per node joined to it by a veth pair. Pod subnets,
routes between nodes and the Service CIDR exist only inside the node namespaces."""
from __future__ import annotations

import fcntl
import ipaddress
import subprocess
from pathlib import Path

from stoker.devcluster.realnodes.layout import SERVICE_CIDR, Net, Node

LOCK = Path("/run/stoker-realnodes-net.lock")
SUBNET_POOL = ipaddress.ip_network("100.64.0.0/16")   # carrier-grade NAT space; one /24 per cluster


class NetError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    if netns:
        argv = ("nsenter", f"--net=/run/netns/{netns}", "--", *argv)
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = sh("ip", "-o", "-4", "addr", "show").stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def pick_subnet(used: list[ipaddress.IPv4Network]) -> str:
    """The first /24 of the pool that overlaps nothing on the host (pure)."""
    for candidate in SUBNET_POOL.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise NetError(f"no free /24 left in {SUBNET_POOL} for a node bridge")


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, check=False).returncode == 0


def ensure_bridge(cid: str, subnet: str | None) -> Net:
    """Create (or find) the cluster's bridge. Subnets are picked under a host-wide lock, so
    clusters started at once never share one."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        bridge = Net(cid, subnet or "0.0.0.0/24").bridge
        if link_exists(bridge) and subnet:
            return Net(cid, subnet)
        if link_exists(bridge):  # ours from an earlier run whose config was lost
            sh("ip", "link", "del", bridge)
        net = Net(cid, subnet if subnet and not _overlaps_host(subnet) else pick_subnet(_used_networks()))
        sh("ip", "link", "add", net.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{net.gateway}/{net.prefixlen}", "dev", net.bridge)
        sh("ip", "link", "set", net.bridge, "up")
        return net


def _overlaps_host(subnet: str) -> bool:
    return any(ipaddress.ip_network(subnet).overlaps(u) for u in _used_networks())


def delete_bridge(net: Net) -> None:
    if link_exists(net.bridge):
        sh("ip", "link", "del", net.bridge)


def node_routes(node: Node, peers: list[Node]) -> list[list[str]]:
    """`ip route add` arguments inside ``node``'s namespace (pure): each peer's pod subnet via
    the peer, the Service CIDR via the bridge (kube-proxy rewrites it before it leaves)."""
    routes = [[p.pod_cidr, "via", p.ip] for p in peers if p.index != node.index]
    routes.append([SERVICE_CIDR, "via", node.net.gateway])
    return routes


def create_netns(node: Node) -> None:
    """The node's namespace, its veth to the bridge, forwarding and the masquerade towards
    the host (pods reach the apiserver and S3 at the bridge address)."""
    if Path(node.netns_path).exists():
        delete_netns(node)
    sh("ip", "netns", "add", node.netns)
    sh("ip", "link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
    sh("ip", "link", "set", node.host_veth, "master", node.net.bridge)
    sh("ip", "link", "set", node.host_veth, "up")
    ns = node.netns
    sh("ip", "addr", "add", f"{node.ip}/{node.net.prefixlen}", "dev", "eth0", netns=ns)
    sh("ip", "link", "set", "eth0", "up", netns=ns)
    sh("ip", "link", "set", "lo", "up", netns=ns)
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", netns=ns)       # per namespace
    sh("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", node.pod_cidr,
       "-d", f"{node.net.gateway}/32", "-j", "MASQUERADE", netns=ns)


def add_routes(node: Node, peers: list[Node]) -> None:
    for route in node_routes(node, peers):
        sh("ip", "route", "replace", *route, netns=node.netns)


def delete_netns(node: Node) -> None:
    """Removes the namespace (its veth pair and every iptables rule in it go with it)."""
    if Path(node.netns_path).exists():
        sh("ip", "netns", "delete", node.netns)
    if link_exists(node.host_veth):   # (normally gone with the namespace, maybe a moment later)
        sh("ip", "link", "del", node.host_veth, check=False)
