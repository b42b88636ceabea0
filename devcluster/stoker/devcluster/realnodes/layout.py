"""Where a real node's pieces live: names, addresses and paths, all derived from the
cluster's state dir and the node's index (pure; no I/O)."""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DNS_IP = "10.96.0.10"
POD_CIDR = "10.244.0.0/16"        # node i gets 10.244.i.0/24; only routed inside node namespaces
CLUSTER_DOMAIN = "cluster.local"
NODE_PREFIX = "real-node"
# The kernel settings the kubelet insists on (pkg/kubelet/cm/container_manager_linux.go,
# setupKernelTunables): it would write them to the host unless it already reads these values.
KUBELET_KERNEL_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


def cluster_id(state_dir: Path) -> str:
    """Six hex digits naming this cluster's host objects (bridge, namespaces, cgroups)."""
    return hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:6]


@dataclass(frozen=True)
class Net:
    """The cluster's node network: a bridge on the host with a /24 of its own."""
    cid: str
    subnet: str                    # e.g. 100.64.7.0/24

    @property
    def bridge(self) -> str:
        return f"stk-{self.cid}"

    @property
    def gateway(self) -> str:      # the bridge's address: the apiserver and S3 as nodes see them
        return str(ipaddress.ip_network(self.subnet)[1])

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def node_ip(self, index: int) -> str:
        return str(ipaddress.ip_network(self.subnet)[10 + index])


@dataclass(frozen=True)
class Node:
    """One real node: index ``i`` of the cluster ``cid`` whose state lives in ``state_dir``."""
    state_dir: Path
    net: Net
    index: int

    @property
    def name(self) -> str:
        return f"{NODE_PREFIX}-{self.index}"

    @property
    def ip(self) -> str:
        return self.net.node_ip(self.index)

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def netns(self) -> str:        # under /run/netns (ip netns)
        return f"stoker-{self.net.cid}-{self.index}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def host_veth(self) -> str:
        return f"stk-{self.net.cid}-{self.index}"

    @property
    def cgroup_root(self) -> str:  # the kubelet's cgroupRoot, in every v1 hierarchy
        return f"/stoker-{self.net.cid}-{self.index}"

    @property
    def dir(self) -> Path:
        return Path(self.state_dir) / "realnodes" / self.name

    @property
    def run_dir(self) -> Path:
        """Short path for sockets (unix socket paths are limited to 107 bytes)."""
        return Path(f"/run/stoker-{self.net.cid}/{self.index}")

    @property
    def containerd_sock(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def mount_ns(self) -> Path:
        """The node's mount namespace, kept alive by a bind mount of this file."""
        return self.run_dir / "mnt"

    @property
    def kubelet_dir(self) -> Path:  # short too: device plugins put their sockets in here
        return self.run_dir / "kubelet"

    @property
    def device_plugin_dir(self) -> Path:
        return self.kubelet_dir / "device-plugins"
