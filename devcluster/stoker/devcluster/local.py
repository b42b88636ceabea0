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
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

import yaml

from stoker.devcluster import pki
from stoker.devcluster.client import Client
from stoker.devcluster.components import Components
from stoker.devcluster.nodes import Nodes
from stoker.devcluster.clusterdefs import COMPONENTS, K8S_COMPONENTS, S3_REGION, SERVICE_IP, TIMEOUTS, _stderr, cache_dir, default_state_dir
from stoker.devcluster.procs import (ClusterError, cmdline, free_port, log_tail, owned_alive, port_free, processes_mentioning,
                                     read_pid, spawn, stop_group, wait_ready)

__all__ = ["LocalCluster", "ClusterError", "default_state_dir", "cache_dir"]

class LocalCluster(Components, Client, Nodes):
    """One control plane + S3 server whose whole state lives in ``state_dir``."""

    def __init__(
        self,
        state_dir: str | os.PathLike | None = None,
        *,
        log: Callable[[str], None] = _stderr,
        die_with_parent: bool = False,
        node_monitor_grace_period: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).absolute()
        # The controller-manager's --node-monitor-grace-period when this object starts it (default: the
        # test setting NODE_MONITOR_GRACE_PERIOD; a scale benchmark whose kwok nodes renew late under
        # load passes Kubernetes' own default, "50s").
        self.node_monitor_grace_period = node_monitor_grace_period
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
        """With real nodes MinIO listens on the node bridge's address, which pods and host
        processes alike can reach; otherwise on loopback."""
        return f"http://{self._realnet_gateway() or '127.0.0.1'}:{self.port('minio')}"

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

    def _ensure_files(self) -> None:
        for d in (self.state_dir, self.run_dir, self.logs_dir, self.state_dir / "kubeconfigs"):
            d.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        gw = self._realnet_gateway()
        pki.ensure_pki(self.pki_dir, SERVICE_IP, [gw] if gw else [])

    def real_nodes(self):
        """The real (kubelet + containerd) nodes of this cluster: realnodes/node.py."""
        from stoker.devcluster.realnodes.node import RealNodes
        return RealNodes(self)

    def kueue(self):
        """Kueue's controller-manager and webhooks, started on demand: kueue.py."""
        from stoker.devcluster.kueue import KueueProcess
        return KueueProcess(self)

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
    def up(self, *, kwok_nodes: int = 0, process_nodes: int = 0, gpus: int = 8,
           real_nodes: int = 0) -> "LocalCluster":
        """Start whatever is not running; return self. Safe to call again."""
        t0 = time.monotonic()
        with self._lock():
            if real_nodes:
                self.real_nodes().ensure_net()
            self._ensure_files()
            running = {n: self.pid(n) for n in COMPONENTS}
            gw = self._realnet_gateway()
            if gw and running["kube-apiserver"] and f"--advertise-address={gw}" not in cmdline(running["kube-apiserver"]):
                stop_group(running["kube-apiserver"], self.marker)   # restart it on the bridge
                running["kube-apiserver"] = None
            if gw and running["minio"] and f"--address={gw}:" not in cmdline(running["minio"]):
                stop_group(running["minio"], self.marker)
                running["minio"] = None
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
            if real_nodes:
                self.real_nodes().up(real_nodes, gpus=gpus)
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
            if self.config.get("realnet"):
                self.real_nodes().down()
                stopped.append("real nodes")
            for name in self.process_nodes(include_dead=True):
                if self.stop_process_node(name):
                    stopped.append(f"node/{name}")
            kueue = read_pid(self.pidfile("kueue"))   # started on demand (kueue.py), before the apiserver goes
            if kueue and stop_group(kueue, self.marker):
                stopped.append("kueue")
            self.pidfile("kueue").unlink(missing_ok=True)
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
                "minio": self.s3_endpoint if "minio" in ports else "",
            }
        for name in COMPONENTS:
            pid = self.pid(name)
            rows.append({"name": name, "pid": pid, "running": pid is not None,
                         "endpoint": endpoints.get(name, ""), "log": str(self.logfile(name))})
        for name in self.process_nodes(include_dead=True):
            pid = self._node_pid(name)
            rows.append({"name": f"node/{name}", "pid": pid, "running": pid is not None,
                         "endpoint": "", "log": str(self.logfile(f"node-{name}"))})
        if self.config.get("realnet"):
            rows.extend(self.real_nodes().status_rows())
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

    def __enter__(self) -> "LocalCluster":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
