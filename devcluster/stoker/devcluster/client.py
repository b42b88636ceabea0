"""Talking to a running LocalCluster: its API with the admin certificate, kubectl, CRDs,
and the S3 server (credentials, the Secret jobs use, stop/start)."""
from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from stoker.common import env as stoker_env
from stoker.devcluster.clusterdefs import S3_REGION
from stoker.devcluster.procs import ClusterError, port_free, read_pid, stop_group


class Client:
    """Mixin of LocalCluster: API, kubectl, S3."""

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
