"""A real Kubernetes control plane and S3 server on loopback, for tests and local use.

    c = LocalCluster("/tmp/x").up(kwok_nodes=4)
    c.kubectl("get", "nodes")
    c.down()

Components (binaries built from the pinned Go modules in devcluster/stoker/devcluster/go by
build-tools.sh): etcd, kube-apiserver (TLS, Node+RBAC authorization, anonymous
auth off, service-account tokens), kube-controller-manager (all controllers,
short node-monitor grace period, see NODE_MONITOR_*), kube-scheduler, kwok
(simulates nodes annotated ``kwok.x-k8s.io/node=fake`` and the pods on them)
and MinIO (S3). Each runs in its own session with a pid file under
``<state>/run`` and a log under ``<state>/logs``. ``up`` is idempotent; ``down``
stops everything, including anything else still mentioning the state dir.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import yaml

from stoker.common import env as stoker_env
from stoker.devcluster import pki
from stoker.devcluster.procs import (
    ClusterError,
    free_port,
    log_tail,
    owned_alive,
    processes_mentioning,
    read_pid,
    spawn,
    stop_group,
    wait_ready,
)

__all__ = ["LocalCluster", "ClusterError", "default_state_dir", "cache_dir"]

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-tools.sh"

# Test setting: a node whose heartbeats stop is marked NotReady/Unknown after
# NODE_MONITOR_GRACE_PERIOD (Kubernetes' default is 50s). kwok renews node leases
# every KWOK_NODE_LEASE_SECONDS/4 seconds, well inside the grace period; a process
# node agent must heartbeat at least as often.
NODE_MONITOR_PERIOD = "2s"
NODE_MONITOR_GRACE_PERIOD = "10s"
KWOK_NODE_LEASE_SECONDS = 8

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"          # the `kubernetes` Service, in the apiserver cert
KWOK_POD_CIDR = "10.0.0.1/16"     # pod IPs kwok hands out
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
S3_REGION = "us-east-1"

KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"

# Start order; `down` stops in reverse.
COMPONENTS = ["etcd", "minio", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
K8S_COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
PORT_NAMES = ["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "minio"]
TIMEOUTS = {"etcd": 30, "kube-apiserver": 90, "minio": 60}


def cache_dir() -> Path:
    return Path(os.environ.get("STOKER_CACHE") or Path.home() / ".cache" / "stoker")


def default_state_dir() -> Path:
    return Path(os.environ.get("STOKER_HOME") or Path.home() / ".stoker" / "cluster")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _http_ok(url: str, ctx: ssl.SSLContext | None = None, expect: bytes | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
        body = r.read()
        return r.status == 200 and (expect is None or expect in body)


def kwok_node_manifest(
    name: str,
    *,
    gpus: int,
    gpu_product: str = DEFAULT_GPU_PRODUCT,
    zone: str | None = None,
    labels: dict[str, str] | None = None,
    taints: Iterable[dict] = (),
) -> dict:
    """A Node object kwok will manage, with ``gpus`` × nvidia.com/gpu."""
    all_labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
        # kwok manages nodes with this label AND annotation; removing the label (a
        # server-side watch selector) makes kwok let go of the node: see lose_kwok_node.
        KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1],
    }
    if gpus:
        all_labels[GPU_PRODUCT_LABEL] = gpu_product
        all_labels[GPU_COUNT_LABEL] = str(gpus)
    if zone:
        all_labels[ZONE_LABEL] = zone
    all_labels.update(labels or {})
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": list(taints)},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


class LocalCluster:
    """One control plane + S3 server whose whole state lives in ``state_dir``."""

    def __init__(
        self,
        state_dir: str | os.PathLike | None = None,
        *,
        log: Callable[[str], None] = _stderr,
        die_with_parent: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).absolute()
        self.log = log
        # Tie components to this process (for throwaway test clusters).
        self.die_with_parent = die_with_parent
        self.marker = f"{self.state_dir}/"   # every component's argv mentions a path in here
        self.pki_dir = self.state_dir / "pki"
        self.run_dir = self.state_dir / "run"
        self.logs_dir = self.state_dir / "logs"
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.config_file = self.state_dir / "cluster.json"
        self.s3_env_file = self.state_dir / "s3.env"
        self._config: dict | None = None
        self._tools: dict[str, str] = {}

    # ------------------------------------------------------------------ state
    @property
    def config(self) -> dict:
        if self._config is None:
            if self.config_file.exists():
                self._config = json.loads(self.config_file.read_text())
            else:
                self._config = {
                    "ports": {},
                    "s3": {"access_key": "stoker-" + secrets.token_hex(4),
                           "secret_key": secrets.token_urlsafe(24)},
                }
        return self._config

    def _save_config(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.config_file)

    def port(self, name: str) -> int:
        return int(self.config["ports"][name])

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.port('kube-apiserver')}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port('minio')}"

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def logfile(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        pid = read_pid(self.pidfile(name))
        return pid if pid and owned_alive(pid, self.marker) else None

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    @contextmanager
    def _lock(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ tools
    def tools(self, *names: str, refresh: bool = False) -> dict[str, str]:
        """Paths of the Go tools, building missing ones (progress on the log).
        ``refresh``: ask build-tools.sh even if a path is known (picks up module changes)."""
        cache = self.state_dir / "tools.json"
        if not self._tools and cache.exists():
            self._tools = json.loads(cache.read_text())
        want = [n for n in names
                if refresh or not (n in self._tools and os.access(self._tools[n], os.X_OK))]
        if want or not names:
            self._tools.update(self._build(want))
            self.state_dir.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(self._tools, indent=2) + "\n")
        return {n: self._tools[n] for n in (names or self._tools)}

    def tool(self, name: str) -> str:
        return self.tools(name)[name]

    def _build(self, names: list[str]) -> dict[str, str]:
        """Run build-tools.sh; stream its progress, with a heartbeat while it compiles."""
        start = time.monotonic()
        proc = subprocess.Popen(
            ["bash", str(BUILD_SCRIPT), *names],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []

        def pump() -> None:
            for line in proc.stderr:
                lines.append(line.rstrip())
                self.log(f"[build] {line.rstrip()}")

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(0.2)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                self.log(f"[build] still building ... {int(last - start)}s elapsed "
                         "(the first build of the Go tools takes many minutes on 2 cores)")
        t.join(timeout=5)
        out = proc.stdout.read()
        if proc.returncode != 0:
            tail = "\n".join(lines[-40:])
            raise ClusterError(f"building tools failed ({BUILD_SCRIPT} {' '.join(names)}, "
                               f"exit {proc.returncode}):\n{tail}")
        paths = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        missing = [n for n in names if n not in paths]
        if missing:
            raise ClusterError(f"build-tools.sh printed no path for {missing}")
        return paths

    # ------------------------------------------------------------------ files
    def _ensure_files(self) -> None:
        for d in (self.state_dir, self.run_dir, self.logs_dir, self.state_dir / "kubeconfigs"):
            d.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        pki.ensure_pki(self.pki_dir, SERVICE_IP)

    def _write_kubeconfigs(self) -> None:
        server = self.apiserver_url
        files = {
            self.kubeconfig: "admin",
            self.state_dir / "kubeconfigs" / "controller-manager.kubeconfig": "controller-manager",
            self.state_dir / "kubeconfigs" / "scheduler.kubeconfig": "scheduler",
        }
        for path, client in files.items():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump(pki.kubeconfig(self.pki_dir, server, client), sort_keys=False))
            tmp.chmod(0o600)
            tmp.replace(path)
        s3 = self.s3_env()
        self.s3_env_file.write_text("".join(f"export {k}={v}\n" for k, v in s3.items()))
        self.s3_env_file.chmod(0o600)

    def _assign_ports(self, names: Iterable[str]) -> None:
        ports = self.config["ports"]
        for name in names:
            if name not in ports or not port_free(int(ports[name])):
                if name in ports:
                    self.log(f"[cluster] port {ports[name]} for {name} is taken; picking another")
                ports[name] = free_port()
        self._save_config()

    # --------------------------------------------------------------- commands
    def argv(self, name: str) -> tuple[list[str], dict[str, str]]:
        """Command line and environment of one component."""
        p, sd = self.pki_dir, self.state_dir
        env = dict(os.environ)
        t = self._tools
        if name == "etcd":
            peer = f"http://127.0.0.1:{self.port('etcd-peer')}"
            client = f"http://127.0.0.1:{self.port('etcd')}"
            return [
                t["etcd"], "--name=default", f"--data-dir={sd}/etcd",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",  # test data: page cache is durable enough, saves seconds
                "--log-level=warn",
            ], env
        if name == "kube-apiserver":
            return [
                t["kube-apiserver"],
                f"--etcd-servers=http://127.0.0.1:{self.port('etcd')}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={self.port('kube-apiserver')}",
                f"--cert-dir={sd}/run/apiserver-certs",
                f"--tls-cert-file={p}/apiserver.crt", f"--tls-private-key-file={p}/apiserver.key",
                f"--client-ca-file={p}/ca.crt",
                # Container logs of process-node pods (the node agent's kubelet API, devcluster/stoker/devcluster/nodeagent/kubeletapi.py).
                f"--kubelet-client-certificate={p}/apiserver-kubelet-client.crt",
                f"--kubelet-client-key={p}/apiserver-kubelet-client.key",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--anonymous-auth=false",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p}/sa.pub",
                f"--service-account-signing-key-file={p}/sa.key",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
            ], env
        if name == "kube-controller-manager":
            return [
                t["kube-controller-manager"],
                f"--kubeconfig={sd}/kubeconfigs/controller-manager.kubeconfig",
                "--bind-address=127.0.0.1", f"--secure-port={self.port(name)}",
                f"--cert-dir={sd}/run/controller-manager-certs",
                # Everything on by default; the cloud controllers are skipped by the binary itself.
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p}/sa.key",
                f"--root-ca-file={p}/ca.crt",
                f"--cluster-signing-cert-file={p}/ca.crt", f"--cluster-signing-key-file={p}/ca.key",
                f"--node-monitor-period={NODE_MONITOR_PERIOD}",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE_PERIOD}",
                "--enable-garbage-collector=true",
                "--leader-elect=false",
                "--cluster-name=stoker-local",
                "--profiling=false",
            ], env
        if name == "kube-scheduler":
            return [
                t["kube-scheduler"],
                f"--kubeconfig={sd}/kubeconfigs/scheduler.kubeconfig",
                "--bind-address=127.0.0.1", f"--secure-port={self.port(name)}",
                f"--cert-dir={sd}/run/scheduler-certs",
                "--leader-elect=false",
                "--profiling=false",
            ], env
        if name == "kwok":
            env["HOME"] = str(sd / "run" / "kwok-home")  # kwok reads ~/.kwok; keep it hermetic
            return [
                t["kwok"],
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
                f"--manage-nodes-with-label-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--node-lease-duration-seconds={KWOK_NODE_LEASE_SECONDS}",
                f"--server-address=127.0.0.1:{self.port('kwok')}",
                "--v=WARN",  # INFO logs every lease renewal
            ], env
        if name == "minio":
            s3 = self.config["s3"]
            env.update({
                "MINIO_ROOT_USER": s3["access_key"],
                "MINIO_ROOT_PASSWORD": s3["secret_key"],
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_REGION": S3_REGION,
                "HOME": str(sd / "run" / "minio-home"),
            })
            return [
                t["minio"], "server", f"{sd}/s3",
                f"--address=127.0.0.1:{self.port('minio')}",
                f"--certs-dir={sd}/run/minio-certs",
                "--quiet",
            ], env
        raise KeyError(name)

    def _ready_check(self, name: str) -> Callable[[], bool]:
        if name == "etcd":
            return lambda: _http_ok(f"http://127.0.0.1:{self.port('etcd')}/health", expect=b'"true"')
        if name == "kube-apiserver":
            ctx = self._admin_ssl()
            return lambda: _http_ok(f"{self.apiserver_url}/readyz", ctx)
        if name in ("kube-controller-manager", "kube-scheduler"):
            ctx = ssl._create_unverified_context()  # self-signed serving cert of the component
            return lambda: _http_ok(f"https://127.0.0.1:{self.port(name)}/healthz", ctx)
        if name == "kwok":
            return lambda: _http_ok(f"http://127.0.0.1:{self.port('kwok')}/healthz")
        if name == "minio":
            return lambda: _http_ok(f"{self.s3_endpoint}/minio/health/live")
        raise KeyError(name)

    def _start(self, name: str) -> subprocess.Popen:
        argv, env = self.argv(name)
        for d in ("run/kwok-home", "run/minio-home", "s3"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        proc = spawn(argv, logfile=self.logfile(name), pidfile=self.pidfile(name), env=env,
                     die_with_parent=self.die_with_parent)
        endpoint = {"minio": self.s3_endpoint, "kube-apiserver": self.apiserver_url}.get(name, "")
        self.log(f"[cluster] started {name} (pid {proc.pid}) {endpoint}".rstrip())
        return proc

    def _wait(self, name: str, proc: subprocess.Popen) -> None:
        took = wait_ready(name, self._ready_check(name), proc=proc,
                          logfile=self.logfile(name), timeout=TIMEOUTS.get(name, 60))
        self.log(f"[cluster] {name} ready ({took:.1f}s)")

    # --------------------------------------------------------------------- up
    def up(self, *, kwok_nodes: int = 0, process_nodes: int = 0, gpus: int = 8) -> "LocalCluster":
        """Start whatever is not running; return self. Safe to call again."""
        t0 = time.monotonic()
        with self._lock():
            self._ensure_files()
            running = {n: self.pid(n) for n in COMPONENTS}
            if all(running.values()):
                self.log(f"[cluster] already running in {self.state_dir}")
            else:
                # etcd and the apiserver anchor the rest: if either is down, restart
                # the Kubernetes side as a whole (etcd data persists) on free ports.
                k8s_fresh = not (running["etcd"] and running["kube-apiserver"])
                if k8s_fresh:
                    for n in reversed(K8S_COMPONENTS):
                        if running[n]:
                            stop_group(running[n], self.marker)
                            running[n] = None
                to_start = [n for n in COMPONENTS if not running[n]]
                ports = {"etcd": ["etcd", "etcd-peer"]}
                self._assign_ports(p for n in to_start for p in ports.get(n, [n]))
                self._write_kubeconfigs()
                self.tools(*COMPONENTS, "kubectl", refresh=True)
                self._start_components(to_start)
                self._wait_default_serviceaccount()
            self._write_kubeconfigs()
            self.create_s3_secret("default")
            if kwok_nodes:
                self.add_kwok_nodes(kwok_nodes, gpus=gpus)
            for i in range(process_nodes):
                name = f"proc-node-{i}"
                if name not in self.process_nodes():
                    self.start_process_node(name, gpus=gpus, zone=("zone-a", "zone-b")[i % 2])
        self.log(f"[cluster] up in {time.monotonic() - t0:.1f}s")
        return self

    def _start_components(self, to_start: list[str]) -> None:
        # etcd and minio first (independent), then the apiserver, then its clients;
        # each group starts together and is then waited for.
        for group in (["etcd", "minio"], ["kube-apiserver"],
                      ["kube-controller-manager", "kube-scheduler", "kwok"]):
            procs = {n: self._start(n) for n in group if n in to_start}
            for n, proc in procs.items():
                self._wait_or_move(n, proc)

    def _wait_or_move(self, name: str, proc: subprocess.Popen, attempts: int = 3) -> None:
        """Wait for ``name``; if it died because its port was taken meanwhile (other
        clusters pick free ports at the same time), move it to a new port and retry."""
        for attempt in range(attempts):
            try:
                self._wait(name, proc)
                return
            except ClusterError:
                last_run = self.logfile(name).read_text(errors="replace").rsplit("\n=== ", 1)[-1]
                if attempt == attempts - 1 or not re.search(
                        r"address already in use|port is already in use", last_run, re.I):
                    raise
                ports = {"etcd": ["etcd", "etcd-peer"]}.get(name, [name])
                self.log(f"[cluster] {name}: port taken meanwhile, moving to another port")
                for p in ports:
                    self.config["ports"][p] = free_port()
                self._save_config()
                if name == "kube-apiserver":
                    self._write_kubeconfigs()
                proc = self._start(name)

    def _wait_default_serviceaccount(self) -> None:
        """The controller-manager creates `default` ServiceAccounts; pods need them."""
        deadline = time.monotonic() + 60
        while True:
            status, _ = self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default", ok=None)
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    "the controller-manager did not create the default ServiceAccount within 60s. "
                    f"Last lines of {self.logfile('kube-controller-manager')}:\n"
                    f"{log_tail(self.logfile('kube-controller-manager'))}")
            time.sleep(0.2)

    # ------------------------------------------------------------------- down
    def down(self) -> list[str]:
        """Stop every process of this cluster; return what was stopped. Data stays."""
        stopped = []
        with self._lock():
            for name in self.process_nodes(include_dead=True):
                if self.stop_process_node(name):
                    stopped.append(f"node/{name}")
            for name in reversed(COMPONENTS):
                pid = read_pid(self.pidfile(name))
                if pid and stop_group(pid, self.marker):
                    stopped.append(name)
                self.pidfile(name).unlink(missing_ok=True)
            # Anything else still mentioning the state dir (children that left their group).
            for pid in processes_mentioning(self.marker):
                if stop_group(pid, self.marker, grace=5):
                    stopped.append(f"pid/{pid}")
                else:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        stopped.append(f"pid/{pid}")
                    except ProcessLookupError:
                        pass
        if stopped:
            self.log(f"[cluster] stopped {', '.join(stopped)}")
        else:
            self.log(f"[cluster] nothing running in {self.state_dir}")
        return stopped

    def leftover_pids(self) -> list[int]:
        """Live processes that still mention this cluster's state dir (should be none after down)."""
        return processes_mentioning(self.marker)

    # ----------------------------------------------------------------- status
    def status(self) -> list[dict]:
        rows = []
        endpoints = {}
        if self.config_file.exists():
            ports = self.config.get("ports", {})
            endpoints = {
                "etcd": f"http://127.0.0.1:{ports.get('etcd')}",
                "kube-apiserver": f"https://127.0.0.1:{ports.get('kube-apiserver')}",
                "kube-controller-manager": f"https://127.0.0.1:{ports.get('kube-controller-manager')}",
                "kube-scheduler": f"https://127.0.0.1:{ports.get('kube-scheduler')}",
                "kwok": f"http://127.0.0.1:{ports.get('kwok')}",
                "minio": f"http://127.0.0.1:{ports.get('minio')}",
            }
        for name in COMPONENTS:
            pid = self.pid(name)
            rows.append({"name": name, "pid": pid, "running": pid is not None,
                         "endpoint": endpoints.get(name, ""), "log": str(self.logfile(name))})
        for name in self.process_nodes(include_dead=True):
            pid = self._node_pid(name)
            rows.append({"name": f"node/{name}", "pid": pid, "running": pid is not None,
                         "endpoint": "", "log": str(self.logfile(f"node-{name}"))})
        return rows

    def status_table(self) -> str:
        rows = self.status()
        lines = [f"{'COMPONENT':<26}{'PID':>8}  {'STATE':<8} {'ENDPOINT':<28} LOG"]
        for r in rows:
            lines.append(f"{r['name']:<26}{r['pid'] or '-':>8}  {'running' if r['running'] else 'stopped':<8} "
                         f"{r['endpoint']:<28} {r['log']}")
        return "\n".join(lines)

    def is_up(self) -> bool:
        return all(self.running(n) for n in COMPONENTS)

    def info(self) -> str:
        """How to use the running cluster, for people."""
        return "\n".join([
            f"export KUBECONFIG={self.kubeconfig}",
            f"kubectl: {self._tools.get('kubectl') or self.tool('kubectl')}",
            f"S3 endpoint: {self.s3_endpoint} (region {S3_REGION})",
            f"S3 credentials: for local processes `source {self.s3_env_file}` "
            f"({', '.join(self.s3_env())}); in the cluster the Secret `stoker-s3` in namespace "
            "`default` holds the same keys (make one elsewhere with create_s3_secret(namespace)).",
        ])

    # ---------------------------------------------------------------- helpers
    def _admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: dict | None = None, *,
            ok: tuple[int, ...] | None = (200, 201)) -> tuple[int, dict]:
        """One admin request to the apiserver. Raises unless the status is in ``ok``
        (``ok=None``: never raises for an HTTP status)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.apiserver_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._admin_ssl()) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        if ok is not None and status not in ok:
            raise ClusterError(f"{method} {path} -> {status}: {payload.get('message', payload)}")
        return status, payload

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the built kubectl against this cluster; raises with stderr on failure."""
        cmd = [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def wait_crd_established(self, name: str, timeout: float = 60) -> None:
        """Wait until CRD ``name`` is Established. Polls the condition itself:
        `kubectl wait --for=condition=Established` fails at once ("accessor error")
        when it looks before the apiserver has written any condition."""
        path = '{.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        while True:
            r = self.kubectl("get", "crd", name, "-o", f"jsonpath={path}", check=False)
            if r.returncode == 0 and r.stdout.strip() == "True":
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"CRD {name} not Established after {timeout:g}s: {r.stdout.strip() or r.stderr.strip()}")
            time.sleep(0.1)

    def add_kwok_nodes(
        self,
        n: int,
        *,
        gpus: int = 8,
        labels: dict[str, str] | None = None,
        taints: Iterable[dict] = (),
        prefix: str = "kwok-node",
        gpu_product: str = DEFAULT_GPU_PRODUCT,
        zones: Iterable[str] = ("zone-a", "zone-b"),
        start: int = 0,
    ) -> list[str]:
        """Create ``n`` kwok-managed Nodes ``<prefix>-<i>``, zones assigned round-robin.
        Existing nodes of the same name are kept. Returns the names."""
        zones = list(zones)
        names = []
        for i in range(start, start + n):
            name = f"{prefix}-{i}"
            zone = zones[i % len(zones)] if zones else None
            body = kwok_node_manifest(name, gpus=gpus, gpu_product=gpu_product, zone=zone,
                                      labels=labels, taints=taints)
            status, payload = self.api("POST", "/api/v1/nodes", body, ok=(201, 409))
            names.append(name)
        if names:
            self.log(f"[cluster] kwok nodes {names[0]}..{names[-1]} ({gpus} GPUs each)")
        return names

    def lose_kwok_node(self, name: str) -> None:
        """Simulate losing a kwok node: kwok stops renewing its lease and status (its
        pods stay as they are), so the controller-manager marks it Unknown after
        NODE_MONITOR_GRACE_PERIOD and taints it unreachable."""
        patch = {"metadata": {"labels": {KWOK_ANNOTATION[0]: None}}}
        data = json.dumps(patch).encode()
        req = urllib.request.Request(f"{self.apiserver_url}/api/v1/nodes/{name}", data=data,
                                     method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json"})
        with urllib.request.urlopen(req, timeout=30, context=self._admin_ssl()):
            pass

    def delete_nodes(self, names: Iterable[str]) -> None:
        for name in names:
            self.api("DELETE", f"/api/v1/nodes/{name}", ok=(200, 202, 404))

    # --------------------------------------------------------------------- S3
    def s3_env(self) -> dict[str, str]:
        s3 = self.config["s3"]
        return {
            stoker_env.S3_ENDPOINT: self.s3_endpoint,
            stoker_env.S3_ACCESS_KEY: s3["access_key"],
            stoker_env.S3_SECRET_KEY: s3["secret_key"],
            stoker_env.S3_REGION: S3_REGION,
        }

    def create_s3_secret(self, namespace: str, name: str = "stoker-s3") -> str:
        """Create/update Secret ``name`` in ``namespace`` holding s3_env()'s keys."""
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "namespace": namespace}, "stringData": self.s3_env()}
        self.kubectl("apply", "-f", "-", input=json.dumps(secret))
        return name

    def stop_s3(self) -> None:
        pid = read_pid(self.pidfile("minio"))
        if pid:
            stop_group(pid, self.marker)
        self.pidfile("minio").unlink(missing_ok=True)
        self.log("[cluster] minio stopped")

    def start_s3(self) -> None:
        if self.running("minio"):
            return
        self.tools("minio")
        if not port_free(self.port("minio")):
            raise ClusterError(f"port {self.port('minio')} for minio is taken by another process")
        self._wait("minio", self._start("minio"))

    def restart_s3(self) -> None:
        self.stop_s3()
        self.start_s3()

    # ---------------------------------------------------------- process nodes
    def _node_pidfile(self, name: str) -> Path:
        return self.run_dir / "nodes" / f"{name}.pid"

    def _node_pid(self, name: str) -> int | None:
        pid = read_pid(self._node_pidfile(name))
        return pid if pid and owned_alive(pid, self.marker) else None

    def process_nodes(self, include_dead: bool = False) -> list[str]:
        d = self.run_dir / "nodes"
        names = sorted(p.stem for p in d.glob("*.pid")) if d.exists() else []
        return names if include_dead else [n for n in names if self._node_pid(n)]

    def start_process_node(
        self,
        name: str,
        *,
        gpus: int = 8,
        labels: dict[str, str] | None = None,
        gpu_product: str = DEFAULT_GPU_PRODUCT,
        zone: str | None = "zone-a",
        extra_args: Iterable[str] = (),
        wait: bool = True,
        timeout: float = 60,
    ) -> int:
        """Spawn the node agent (stoker.devcluster.nodeagent) for Node ``name``, labelled like a
        kwok node (GPU product/count, zone; ``labels`` override); by default wait
        until the Node reports Ready. Returns the agent's pid (its process group)."""
        node_labels = {ZONE_LABEL: zone} if zone else {}
        if gpus:
            node_labels.update({GPU_PRODUCT_LABEL: gpu_product, GPU_COUNT_LABEL: str(gpus)})
        node_labels.update(labels or {})
        if self._node_pid(name):
            raise ClusterError(f"process node {name} is already running (pid {self._node_pid(name)})")
        node_dir = self.state_dir / "nodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "stoker.devcluster.nodeagent", "--kubeconfig", str(self.kubeconfig),
                "--node", name, "--gpus", str(gpus)]
        for k, v in node_labels.items():
            argv += ["--label", f"{k}={v}"]
        argv += ["--state-dir", str(node_dir), "--kubelet-client-ca", str(self.pki_dir / "ca.crt"), *extra_args]
        env = dict(os.environ)
        logfile = self.logfile(f"node-{name}")
        proc = spawn(argv, logfile=logfile, pidfile=self._node_pidfile(name), env=env,
                     cwd=node_dir, die_with_parent=self.die_with_parent)
        self.log(f"[cluster] started process node {name} (pid {proc.pid}, {gpus} GPUs)")
        if wait:
            def ready() -> bool:
                status, node = self.api("GET", f"/api/v1/nodes/{name}", ok=None)
                conds = node.get("status", {}).get("conditions", []) if status == 200 else []
                return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            took = wait_ready(f"process node {name}", ready, proc=proc, logfile=logfile,
                              timeout=timeout)
            self.log(f"[cluster] process node {name} Ready ({took:.1f}s)")
        return proc.pid

    def stop_process_node(self, name: str, sig: int = signal.SIGTERM, grace: float = 10) -> bool:
        """Signal the agent's whole process group (SIGTERM or SIGKILL simulates losing
        the node); SIGKILL after ``grace``. Returns True if it was running."""
        pid = read_pid(self._node_pidfile(name))
        was = bool(pid) and stop_group(pid, self.marker, sig=sig, grace=grace)
        self._node_pidfile(name).unlink(missing_ok=True)
        if was:
            self.log(f"[cluster] stopped process node {name} ({signal.Signals(sig).name})")
        return was

    # ---------------------------------------------------------------- context
    def __enter__(self) -> "LocalCluster":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
