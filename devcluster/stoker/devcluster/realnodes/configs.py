"""The configuration files of a real node's components, as pure functions of its layout."""
from __future__ import annotations

from pathlib import Path

from stoker.devcluster.realnodes.layout import (
    CLUSTER_DNS_IP, CLUSTER_DOMAIN, POD_CIDR, Node,
)

CNI_BIN_DIR = "/usr/lib/cni"      # Debian's containernetworking-plugins


def containerd_toml(node: Node, pause_image: str) -> str:
    d = node.dir / "containerd"
    return f"""version = 2
root = "{d}/root"
state = "{node.run_dir}/containerd-state"
[grpc]
  address = "{node.containerd_sock}"
[ttrpc]
  address = "{node.containerd_sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # The test bed lacks CAP_SYS_RESOURCE: never ask for an oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces live in containerd's state dir, not the host's /run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni"
"""


def cni_conflist(node: Node) -> dict:
    """Bridge + host-local IPAM over the node's pod subnet (IPAM state in the node's dir)."""
    return {
        "cniVersion": "0.4.0",
        "name": f"stoker-{node.net.cid}-{node.index}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.dir / "cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: Node, pki: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # cgroups v1 (hybrid) on the test bed; no systemd.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{node.containerd_sock}",
        # Host kernel settings: never write them. The node's mount namespace shows the kubelet
        # the values it wants (see node.py), and with protectKernelDefaults a mismatch makes
        # it fail instead of writing the host's /proc/sys.
        "protectKernelDefaults": True,
        "makeIPTablesUtilChains": False,
        "oomScoreAdj": 0,
        "failSwapOn": False,
        "address": node.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(pki / f"kubelet-{node.name}.crt"),
        "tlsPrivateKeyFile": str(pki / f"kubelet-{node.name}.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [CLUSTER_DNS_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "",
        "podCIDR": node.pod_cidr,
        "podLogsDir": str(node.dir / "pod-logs"),
        # The control plane marks a node Unknown after 10 s of silence (local.py).
        "nodeLeaseDurationSeconds": 8,
        "nodeStatusUpdateFrequency": "4s",
        "serializeImagePulls": False,
        # Test bed: the host's disk and memory belong to others too; do not evict for them.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "0%",
                         "imagefs.available": "0%", "nodefs.inodesFree": "0%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(node: Node, kubeconfig: Path) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "bindAddress": node.ip,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # 0 = leave the kernel's conntrack settings alone (nf_conntrack_max is host-wide).
        "conntrack": {"maxPerCore": 0, "min": 0,
                      "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }
