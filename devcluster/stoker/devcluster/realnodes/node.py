"""Start and stop real nodes: per node a network namespace on the cluster's bridge, a mount
namespace, containerd, the kubelet and kube-proxy (see README.md, "Real nodes")."""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import yaml

from stoker.devcluster import pki
from stoker.devcluster.clusterdefs import GPU_RESOURCE
from stoker.devcluster.procs import ClusterError, processes_mentioning, read_pid, spawn, stop_group, wait_ready
from stoker.devcluster.realnodes import cleanup, configs, images, mountns, network
from stoker.devcluster.realnodes.layout import Net, Node, cluster_id

REAL_NODE_LABEL = "stoker.dev/real-node"
COMPONENTS = ["containerd", "kubelet", "kube-proxy"]   # start order; stop in reverse
ALL_COMPONENTS = [*COMPONENTS, "device-plugin"]


class RealNodes:
    """The real nodes of one LocalCluster (``cluster``), whose apiserver listens on the
    bridge's address (``cluster.config["realnet"]``)."""

    def __init__(self, cluster) -> None:
        self.c = cluster
        self.cid = cluster_id(cluster.state_dir)
        self._procs: dict = {}

    # ------------------------------------------------------------------ layout
    @property
    def net(self) -> Net | None:
        subnet = self.c.config.get("realnet", {}).get("subnet")
        return Net(self.cid, subnet) if subnet else None

    def ensure_net(self) -> Net:
        net = network.ensure_bridge(self.cid, self.c.config.get("realnet", {}).get("subnet"))
        self.c.config["realnet"] = {"subnet": net.subnet}
        self.c._save_config()
        return net

    def node(self, index: int) -> Node:
        return Node(self.c.state_dir, self.net, index)

    def known(self) -> list[Node]:
        n = int(self.c.config.get("realnet", {}).get("nodes", 0))
        return [self.node(i) for i in range(n)] if self.net else []

    def pidfile(self, node: Node, comp: str) -> Path:
        return node.dir / "run" / f"{comp}.pid"

    def logfile(self, node: Node, comp: str) -> Path:
        return self.c.logs_dir / f"{node.name}-{comp}.log"

    # --------------------------------------------------------------------- up
    def up(self, n: int, *, gpus: int = 0) -> list[str]:
        if n < 1:
            return []
        tools = self.c.tools("kubelet", "kube-proxy", "coredns")
        specs = [images.pause_image(), images.busybox_image(), images.coredns_image(tools["coredns"])]
        archives = [images.build(spec, self.image_cache(), self.c.log) for spec in specs]
        self.c.config.setdefault("realnet", {})["nodes"] = max(n, len(self.known()))
        self.c._save_config()
        nodes = [self.node(i) for i in range(n)]
        for node in nodes:
            if not self.running(node):
                self.start_node(node, tools, archives, gpus=gpus)
        for node in nodes:
            network.add_routes(node, nodes)
        for node in nodes:
            self.wait_ready(node, gpus=gpus)
        from stoker.devcluster.realnodes import dns
        dns.deploy(self.c, images.coredns_image(tools["coredns"]).ref())
        return [node.name for node in nodes]

    def image_cache(self) -> Path:
        from stoker.devcluster.local import cache_dir
        return cache_dir() / "images"

    def start_node(self, node: Node, tools: dict, archives: list[Path], *, gpus: int = 0) -> None:
        t0 = time.monotonic()
        self._write_files(node)
        network.create_netns(node)
        mountns.create(node)
        cleanup.create_cgroup(node.cgroup_root)
        # A node stopped by SIGKILL (a lost node) leaves its socket behind: waiting for the file
        # would then not wait for containerd (bench/chaos_real.py restarting a lost node).
        node.containerd_sock.unlink(missing_ok=True)
        self._start(node, "containerd", ["containerd", "--config", str(node.dir / "containerd.toml")])
        wait_ready(f"{node.name} containerd", node.containerd_sock.exists,
                   proc=self._procs[node.name, "containerd"],
                   logfile=self.logfile(node, "containerd"), timeout=60)
        for archive in archives:
            images.import_image(archive, node.containerd_sock)
        self._start(node, "kubelet", self._kubelet_argv(node, tools["kubelet"], gpus))
        self._start(node, "kube-proxy", [tools["kube-proxy"], "--config", str(node.dir / "kube-proxy.yaml")])
        if gpus:
            self._start(node, "device-plugin", [
                sys.executable, "-m", "stoker.devcluster.realnodes.deviceplugin",
                "--dir", str(node.device_plugin_dir), "--count", str(gpus), "--node", node.name,
                "--state", str(node.dir)], enter=False)
        self.c.log(f"[realnodes] {node.name} started ({node.ip}, pods {node.pod_cidr}) "
                   f"in {time.monotonic() - t0:.1f}s")

    def _kubelet_argv(self, node: Node, kubelet: str, gpus: int) -> list[str]:
        labels = {REAL_NODE_LABEL: "true"}
        if gpus:
            from stoker.devcluster.clusterdefs import DEFAULT_GPU_PRODUCT, GPU_COUNT_LABEL, GPU_PRODUCT_LABEL
            labels.update({GPU_PRODUCT_LABEL: DEFAULT_GPU_PRODUCT, GPU_COUNT_LABEL: str(gpus)})
        return [kubelet, "--config", str(node.dir / "kubelet.yaml"),
                "--kubeconfig", str(node.dir / "kubelet.kubeconfig"),
                "--root-dir", str(node.kubelet_dir),
                "--hostname-override", node.name, "--node-ip", node.ip,
                "--node-labels", ",".join(f"{k}={v}" for k, v in labels.items()), "--v=1"]

    def _start(self, node: Node, comp: str, argv: list[str], enter: bool = True) -> None:
        proc = spawn([*mountns.enter(node), *argv] if enter else argv, logfile=self.logfile(node, comp),
                     pidfile=self.pidfile(node, comp), die_with_parent=self.c.die_with_parent)
        self._procs[node.name, comp] = proc

    def _write_files(self, node: Node) -> None:
        p = self.c.pki_dir
        for d in (node.dir / "run", node.dir / "containerd" / "cni", node.kubelet_dir, node.dir / "pod-logs"):
            d.mkdir(parents=True, exist_ok=True)
        pki.ensure_client_cert(p, f"node-{node.name}", f"system:node:{node.name}", "system:nodes")
        pki.ensure_client_cert(p, "kube-proxy", "system:kube-proxy")
        pki.ensure_serving_cert(p, f"kubelet-{node.name}", node.name, [node.ip], [node.name])
        server = f"https://{node.net.gateway}:{self.c.port('kube-apiserver')}"
        pause = images.pause_image().ref()
        files = {
            "kubelet.kubeconfig": yaml.safe_dump(pki.kubeconfig(p, server, f"node-{node.name}")),
            "kube-proxy.kubeconfig": yaml.safe_dump(pki.kubeconfig(p, server, "kube-proxy")),
            "kubelet.yaml": yaml.safe_dump(configs.kubelet_config(node, p)),
            "kube-proxy.yaml": yaml.safe_dump(
                configs.kube_proxy_config(node, node.dir / "kube-proxy.kubeconfig")),
            "containerd.toml": configs.containerd_toml(node, pause),
            "containerd/cni/10-stoker.conflist": json.dumps(configs.cni_conflist(node), indent=2),
        }
        for rel, text in files.items():
            (node.dir / rel).write_text(text)
            (node.dir / rel).chmod(0o600)

    def wait_ready(self, node: Node, timeout: float = 120, gpus: int = 0) -> None:
        """Ready, and (``gpus``) its GPUs allocatable: the device plugin registers after the
        kubelet turns Ready (a test that came first saw no nvidia.com/gpu)."""
        def ready() -> bool:
            status, obj = self.c.api("GET", f"/api/v1/nodes/{node.name}", ok=None)
            st = obj.get("status", {}) if status == 200 else {}
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions", [])) \
                and (not gpus or st.get("allocatable", {}).get(GPU_RESOURCE) == str(gpus))
        proc = self._procs.get((node.name, "kubelet"))
        if proc is None:        # started by an earlier `up`
            return
        took = wait_ready(f"real node {node.name}", ready, proc=proc,
                          logfile=self.logfile(node, "kubelet"), timeout=timeout)
        self.c.log(f"[realnodes] {node.name} Ready ({took:.1f}s)")

    def import_image(self, archive: Path) -> None:
        """Load an OCI archive into every running node's containerd."""
        from concurrent.futures import ThreadPoolExecutor
        socks = [node.containerd_sock for node in self.known() if self.running(node)]
        with ThreadPoolExecutor(max_workers=max(1, len(socks))) as pool:
            list(pool.map(lambda sock: images.import_image(archive, sock), socks))

    def tag_image(self, ref: str, name: str) -> None:
        """Give an imported image another name in every running node (as a registry would
        serve it under that name): ``name`` fully qualified, as the kubelet asks for it."""
        for node in self.known():
            if self.running(node):
                images._run("ctr", "--address", str(node.containerd_sock), "--namespace", "k8s.io",
                            "images", "tag", "--force", ref, name)

    # ------------------------------------------------------------------ state
    def pid(self, node: Node, comp: str) -> int | None:
        from stoker.devcluster.procs import owned_alive
        pid = read_pid(self.pidfile(node, comp))
        return pid if pid and owned_alive(pid, self.c.marker) else None

    def status_rows(self) -> list[dict]:
        """`stoker cluster status` rows: one per component of each real node."""
        return [{"name": f"{node.name}/{comp}", "pid": self.pid(node, comp),
                 "running": self.pid(node, comp) is not None,
                 "endpoint": f"https://{node.ip}:10250" if comp == "kubelet" else "",
                 "log": str(self.logfile(node, comp))}
                for node in self.known() for comp in ALL_COMPONENTS]

    def running(self, node: Node) -> bool:
        return all(self.pid(node, comp) for comp in COMPONENTS)

    def partition(self, node: Node, cut: bool = True) -> None:
        """Cut (``cut=True``) or heal the node's one link to the rest of the cluster: its veth on the
        bridge down or up. Everything on the node (kubelet, containerd, pods) runs on and reaches
        nothing off the node: not the apiserver, not S3, not the other nodes' pods."""
        network.sh("ip", "link", "set", node.host_veth, "down" if cut else "up")
        self.c.log(f"[realnodes] {node.name} {'partitioned' if cut else 'healed'}")

    # ------------------------------------------------------------------- down
    def stop_node(self, node: Node, sig: int = signal.SIGTERM) -> None:
        """Stop one node as a machine would stop: its kubelet, kube-proxy, containerd and
        every container gone; its namespaces, cgroups and bridge port removed."""
        for comp in reversed(ALL_COMPONENTS):
            pid = read_pid(self.pidfile(node, comp))
            if pid:
                stop_group(pid, self.c.marker, sig=sig, grace=5)
            self.pidfile(node, comp).unlink(missing_ok=True)
        cleanup.kill_cgroup(node.cgroup_root)
        for pid in processes_mentioning(f"{node.run_dir}/"):   # containerd's shims
            stop_group(pid, f"{node.run_dir}/", sig=signal.SIGKILL, grace=2)
        left = cleanup.remove_cgroup(node.cgroup_root)
        mountns.release(node)
        stuck = cleanup.unmount_all(node.run_dir, node.dir)
        network.delete_netns(node)
        if left or stuck:
            raise ClusterError(f"{node.name}: could not remove cgroups {left} / mounts {stuck}")
        self.c.log(f"[realnodes] {node.name} stopped")

    def down(self) -> None:
        net = self.net
        if not net:
            return
        for node in self.known():
            self.stop_node(node)
            # Its images unpacked (GBs per node with torch): the archives stay in the image cache.
            shutil.rmtree(node.dir / "containerd" / "root", ignore_errors=True)
        network.delete_bridge(net)
        run = Path(f"/run/stoker-{self.cid}")
        if run.exists():
            shutil.rmtree(run, ignore_errors=True)
