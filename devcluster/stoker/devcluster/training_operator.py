"""Kubeflow's training-operator (v1.8.1) in the local cluster, for side-by-side benchmarks only:
its manager built from the pinned Go module (go/training-operator, ``build-tools.sh
training-operator``), the PyTorchJob CRD from that module's own manifests
(manifests/base/crds/kubeflow.org_pytorchjobs.yaml), the manager run as a local process with
only the PyTorchJob controller (``--enable-scheme=pytorchjob``).

    TrainingOperator(cluster).up(namespace="bench-x")   # one manager per call; down() stops it

What differs from Kubeflow's release manifests, and why:

- it runs as a local process, so its ValidatingWebhookConfiguration (the module's
  manifests/base/webhook/manifests.yaml, only the PyTorchJob webhook: the only scheme enabled)
  points at ``https://127.0.0.1:PORT/<path>`` instead of a Service;
- v1.8.1 manages its webhook certificate itself (open-policy-agent's cert-controller: a Secret in
  namespace ``kubeflow``, mounted at the fixed path /tmp/k8s-webhook-server/serving-certs in a
  pod). Its own certificate names only the Service (``training-operator.kubeflow.svc``), which a
  local process cannot be reached as, so the Secret is filled beforehand with a CA and a serving
  certificate that also name 127.0.0.1 (made here, in the form the cert-controller accepts and
  keeps: RSA, PKCS#1, CA named ``training-operator-ca``), and its files are written where the
  Secret would be mounted. The cert-controller then finds them valid, injects the CA into the
  webhook configuration and reports ready, and the apiserver really calls the webhook;
- it authenticates with a client certificate in system:masters (user
  ``kubeflow-training-operator``) instead of its release RBAC;
- ``--namespace`` limits its caches to one namespace (the benchmark's), leader election is off,
  metrics and probes listen on free loopback ports.
"""
from __future__ import annotations

import base64
import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from stoker.devcluster import pki
from stoker.devcluster.webhook_certs import rotator_bundle
from stoker.devcluster.clusterdefs import HERE
from stoker.devcluster.components import _http_ok
from stoker.devcluster.procs import ClusterError, free_port, read_pid, spawn, stop_group, wait_ready

MODULE = "github.com/kubeflow/training-operator"
NAME = "training-operator"
USER = "kubeflow-training-operator"
NAMESPACE = "kubeflow"   # where its cert-controller keeps the webhook Secret
CRD_FILE = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
CRD_NAME = "pytorchjobs.kubeflow.org"
WEBHOOK_SECRET = "training-operator-webhook-cert"   # its --webhook-secret-name default
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"   # the name its cert-controller injects the CA into
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")      # fixed in pkg/cert/cert.go
CA_NAME, SERVICE_DNS = "training-operator-ca", "training-operator.kubeflow.svc"


def module_dir() -> Path:
    """The pinned module's source in the Go module cache (downloaded if missing)."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    cwd = HERE / "go" / NAME
    r = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", MODULE], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        subprocess.run(["go", "mod", "download", MODULE], cwd=cwd, env=env, check=True)
        r = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", MODULE], cwd=cwd, env=env,
                           capture_output=True, text=True, check=True)
    return Path(r.stdout.strip())


def pytorchjob_crd(src: Path) -> dict[str, Any]:
    """The PyTorchJob CRD exactly as the module ships it."""
    return yaml.safe_load((src / CRD_FILE).read_text())


def webhook_configuration(src: Path, url: str, ca_bundle: str) -> dict[str, Any]:
    """The module's ValidatingWebhookConfiguration with only the PyTorchJob webhook, at ``url`` + its path."""
    doc = copy.deepcopy(yaml.safe_load((src / "manifests/base/webhook/manifests.yaml").read_text()))
    hooks = [h for h in doc["webhooks"] if h["clientConfig"]["service"]["path"].endswith("-pytorchjob")]
    for h in hooks:
        h["clientConfig"] = {"url": url + h["clientConfig"]["service"]["path"], "caBundle": ca_bundle}
    return {**doc, "metadata": {"name": WEBHOOK_CONFIG}, "webhooks": hooks}


class TrainingOperator:
    """One training-operator manager next to a LocalCluster (same state dir, pid file and log)."""

    def __init__(self, cluster: Any) -> None:
        self.c = cluster
        self.kubeconfig = cluster.state_dir / "kubeconfigs" / f"{NAME}.kubeconfig"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def install_crd(self) -> None:
        text = yaml.safe_dump(pytorchjob_crd(module_dir()), sort_keys=False)
        self.c.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=stoker-devcluster",
                       "-f", "-", input=text, timeout=180)
        self.c.wait_crd_established(CRD_NAME)

    def up(self, namespace: str | None = None, timeout: float = 120) -> "TrainingOperator":
        """Build (first time), install the CRD, start a manager (watching ``namespace``, or all
        namespaces) and wait until it reports ready. Stops a manager this state dir still runs."""
        c = self.c
        t0 = time.monotonic()
        binary = c.tools(NAME)[NAME]
        self.install_crd()
        self._credentials()
        c.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": NAMESPACE}}, ok=(201, 409))
        self.down()
        probe, webhook_port = free_port(), free_port()
        ca = self._webhook_certs()
        self._apply(webhook_configuration(module_dir(), f"https://127.0.0.1:{webhook_port}", ca))
        argv = [binary, f"--kubeconfig={self.kubeconfig}", "--enable-scheme=pytorchjob", "--leader-elect=false",
                f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--health-probe-bind-address=127.0.0.1:{probe}",
                f"--webhook-server-port={webhook_port}", "--zap-log-level=info", "--zap-devel=false"]
        if namespace:
            argv.append(f"--namespace={namespace}")
        env = {**os.environ, "MY_POD_NAMESPACE": NAMESPACE}
        self.proc = spawn(argv, logfile=c.logfile(NAME), pidfile=c.pidfile(NAME), env=env,
                          die_with_parent=c.die_with_parent)
        c.log(f"[cluster] started {NAME} (pid {self.proc.pid}) namespace={namespace or '*'}")
        wait_ready(NAME, lambda: _http_ok(f"http://127.0.0.1:{probe}/readyz"), proc=self.proc,
                   logfile=c.logfile(NAME), timeout=timeout)
        c.log(f"[cluster] {NAME} ready ({time.monotonic() - t0:.1f}s)")
        return self

    def down(self) -> bool:
        """Stop the manager and unregister its webhook (it would refuse PyTorchJobs meanwhile)."""
        self.c.api("DELETE", f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{WEBHOOK_CONFIG}",
                   ok=None)
        pid = read_pid(self.c.pidfile(NAME))
        stopped = bool(pid) and stop_group(pid, self.c.marker)
        self.c.pidfile(NAME).unlink(missing_ok=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired as e:
                raise ClusterError(f"{NAME} (pid {self.proc.pid}) did not stop") from e
            self.proc = None
        return stopped

    def _credentials(self) -> None:
        p = self.c.pki_dir
        pki.ensure_client_cert(p, NAME, USER, "system:masters")
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(pki.kubeconfig(p, self.c.apiserver_url, NAME), sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _webhook_certs(self) -> str:
        """The cert-controller's Secret, filled with certificates that name 127.0.0.1 too (made once per
        state dir), and their files where the Secret would be mounted. Returns the CA, base64."""
        d = self.c.state_dir / NAME / "webhook-certs"
        if not (d / "tls.key").exists():
            d.mkdir(parents=True, exist_ok=True)
            for name, pem in rotator_bundle(CA_NAME, SERVICE_DNS, ["127.0.0.1"]).items():
                (d / name).write_bytes(pem)
            (d / "ca.key").chmod(0o600)
            (d / "tls.key").chmod(0o600)
        files = {n: (d / n).read_bytes() for n in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": WEBHOOK_SECRET, "namespace": NAMESPACE},
                  "data": {n: base64.b64encode(b).decode() for n, b in files.items()}}
        path = f"/api/v1/namespaces/{NAMESPACE}/secrets"
        if self.c.api("POST", path, secret, ok=(201, 409))[0] == 409:
            self.c.api("PUT", f"{path}/{WEBHOOK_SECRET}", secret, ok=(200,))
        CERT_DIR.mkdir(parents=True, exist_ok=True)
        for n in ("ca.crt", "tls.crt", "tls.key"):
            (CERT_DIR / n).write_bytes(files[n])
        return base64.b64encode(files["ca.crt"]).decode()

    def _apply(self, obj: dict[str, Any]) -> None:
        self.c.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=stoker-devcluster",
                       "-f", "-", input=yaml.safe_dump(obj, sort_keys=False), timeout=180)
