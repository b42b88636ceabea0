"""A real node's mount namespace: containerd, the kubelet and their containers run in it, so
the mounts they make (overlay rootfs, secret tmpfs, pod network namespaces) never appear in
the host's mount table and vanish with it. Inside it, per-node directories cover the host
paths the components hard-code, and the kernel settings the kubelet checks read back the
values it wants, so it never writes the host's /proc/sys."""
from __future__ import annotations

import subprocess
from pathlib import Path

from stoker.devcluster.realnodes.layout import KUBELET_KERNEL_TUNABLES, Node

# Host paths the components use whatever their configuration says -> per-node directory name.
SHADOWED = {
    "/var/log/containers": "var-log-containers",   # the kubelet's container log symlinks
    "/var/lib/cni": "var-lib-cni",                 # libcni's result cache
    "/run/containerd": "run-containerd",           # shim sockets (/run/containerd/s)
}
# The kubelet's device-plugin socket directory is a constant of the API
# (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1: DevicePluginPath), whatever --root-dir says.
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins"


def shadowed(node: Node) -> dict[str, Path]:
    """Host path -> the node's own directory mounted over it inside the node (pure)."""
    own = {host_path: node.dir / name for host_path, name in SHADOWED.items()}
    own[DEVICE_PLUGIN_PATH] = node.device_plugin_dir
    return own


def bind_commands(node: Node) -> list[list[str]]:
    """`mount --bind SRC DST` pairs run inside the node's namespace (pure)."""
    cmds = []
    for name in KUBELET_KERNEL_TUNABLES:
        cmds.append([str(node.run_dir / "sysctl" / name.replace("/", ".")), f"/proc/sys/{name}"])
    for host_path, own in shadowed(node).items():
        cmds.append([str(own), host_path])
    return cmds


def create(node: Node) -> None:
    node.run_dir.mkdir(parents=True, exist_ok=True)
    (node.run_dir / "sysctl").mkdir(exist_ok=True)
    for name, value in KUBELET_KERNEL_TUNABLES.items():
        (node.run_dir / "sysctl" / name.replace("/", ".")).write_text(value + "\n")
    for host_path, own in shadowed(node).items():
        own.mkdir(parents=True, exist_ok=True)
        Path(host_path).mkdir(parents=True, exist_ok=True)   # an empty mount point on the host
    node.mount_ns.touch()
    _run("unshare", f"--mount={node.mount_ns}", "--propagation", "private", "true")
    for src, dst in bind_commands(node):
        _run(*enter(node, net=False), "mount", "--bind", src, dst)


def enter(node: Node, net: bool = True) -> list[str]:
    """The command prefix that runs a program inside the node (its mount and network namespaces)."""
    argv = ["nsenter", f"--mount={node.mount_ns}"]
    if net:
        argv.append(f"--net={node.netns_path}")
    return [*argv, "--"]


def release(node: Node) -> None:
    """Drop the host's hold on the namespace (it ends when its last process has gone)."""
    if node.mount_ns.exists():
        subprocess.run(["umount", str(node.mount_ns)], capture_output=True)


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
