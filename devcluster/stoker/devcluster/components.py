"""The control-plane components of a LocalCluster: the tools built from the pinned Go modules,
each component's command line and environment, and how its readiness is checked."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

from stoker.devcluster.clusterdefs import BUILD_SCRIPT, KWOK_ANNOTATION, KWOK_NODE_LEASE_SECONDS, KWOK_POD_CIDR, NODE_MONITOR_GRACE_PERIOD, NODE_MONITOR_PERIOD, S3_REGION, SA_ISSUER, SERVICE_CIDR
from stoker.devcluster.procs import ClusterError


def _http_ok(url: str, ctx: ssl.SSLContext | None = None, expect: bytes | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
        body = r.read()
        return r.status == 200 and (expect is None or expect in body)


class Components:
    """Mixin of LocalCluster: tools, command lines, readiness checks."""

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

    def _controller_argv(self, name: str, short: str) -> list[str]:
        """kube-controller-manager / kube-scheduler: the binary, its own kubeconfig, serving on loopback."""
        sd = self.state_dir
        return [self._tools[name], f"--kubeconfig={sd}/kubeconfigs/{short}.kubeconfig", "--bind-address=127.0.0.1",
                f"--secure-port={self.port(name)}", f"--cert-dir={sd}/run/{short}-certs"]

    def _audit_args(self) -> list[str]:
        """Opt-in audit log: when ``<state>/audit-policy.yaml`` exists (a benchmark writes it
        before ``up``), the apiserver logs what that policy selects to ``<state>/logs/audit.log``
        (JSON lines). Nothing is audited otherwise."""
        policy = self.state_dir / "audit-policy.yaml"
        if not policy.exists():
            return []
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.logs_dir / 'audit.log'}",
                "--audit-log-format=json", "--audit-log-maxsize=0"]

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
                *self._apiserver_addresses(),
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
                *self._audit_args(),
            ], env
        if name == "kube-controller-manager":
            return [
                *self._controller_argv(name, "controller-manager"),
                # Everything on by default; the cloud controllers are skipped by the binary itself.
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p}/sa.key",
                f"--root-ca-file={p}/ca.crt",
                f"--cluster-signing-cert-file={p}/ca.crt", f"--cluster-signing-key-file={p}/ca.key",
                f"--node-monitor-period={NODE_MONITOR_PERIOD}",
                f"--node-monitor-grace-period={self.node_monitor_grace_period or NODE_MONITOR_GRACE_PERIOD}",
                "--enable-garbage-collector=true",
                "--leader-elect=false",
                "--cluster-name=stoker-local",
                "--profiling=false",
            ], env
        if name == "kube-scheduler":
            return [
                *self._controller_argv(name, "scheduler"),
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
                f"--address={self.s3_endpoint.removeprefix('http://')}",
                f"--certs-dir={sd}/run/minio-certs",
                "--quiet",
            ], env
        raise KeyError(name)

    def _realnet_gateway(self) -> str | None:
        """The node bridge's address when the cluster has real nodes (realnodes/network.py)."""
        from stoker.devcluster.realnodes.layout import Net, cluster_id
        subnet = self.config.get("realnet", {}).get("subnet")
        return Net(cluster_id(self.state_dir), subnet).gateway if subnet else None

    def _apiserver_addresses(self) -> list[str]:
        gw = self._realnet_gateway()
        if not gw:
            return ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
        # Real nodes and their pods reach the apiserver on the bridge (the `kubernetes`
        # Service points there); host clients keep using 127.0.0.1.
        return ["--bind-address=0.0.0.0", f"--advertise-address={gw}"]

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
