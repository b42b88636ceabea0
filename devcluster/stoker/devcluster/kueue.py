"""Kueue in the local cluster, on demand: its controller-manager built from the pinned Go module
(go/kueue, ``build-tools.sh kueue``), its CRDs from that module's own
config/components/crd/bases, and its webhooks served with a certificate from our CA and
registered with the apiserver (caBundle), so Kueue's defaulting, validation and CRD
conversion really run.

    KueueProcess(cluster).up()     # idempotent; cluster.down() stops it with the rest

What differs from Kueue's release manifests, and why:

- it runs as a local process (like the other components), so the webhook configurations and the
  CRDs' conversion webhooks point at ``https://127.0.0.1:PORT/<path>`` instead of a Service;
- only the webhooks of Kueue's own kinds (kueue.x-k8s.io: Workload, ClusterQueue, LocalQueue,
  Cohort, ResourceFlavor, ...) are registered: no job-framework integration is enabled (Stoker
  creates and owns its Workloads, docs/kueue.md), and a registered webhook nobody serves would
  refuse every Job/Pod/Deployment of the cluster;
- its own certificate management is off (the dev cluster's CA issues the serving certificate);
- it authenticates with a client certificate in system:masters (its release RBAC is ~60 rules;
  the dev cluster's admin-like identity stands in for them);
- leader election and the visibility API server are off.
"""
from __future__ import annotations

import base64
import copy
import os
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from stoker.devcluster import pki
from stoker.devcluster.clusterdefs import HERE
from stoker.devcluster.components import _http_ok
from stoker.devcluster.procs import ClusterError, free_port, read_pid, spawn, stop_group, wait_ready

MODULE = "sigs.k8s.io/kueue"
NAME = "kueue"
NAMESPACE = "kueue-system"
# The kinds whose CRDs Kueue's kustomization patches with a conversion webhook (v1beta1 <-> v1beta2).
CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
WEBHOOK_CONFIGS = ("stoker-kueue-mutating", "stoker-kueue-validating")
METRICS_CERTS = Path("/etc/kueue/metrics/certs")


def module_dir() -> Path:
    """The pinned Kueue module's source in the Go module cache (downloaded if missing)."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    r = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", MODULE], cwd=HERE / "go" / "kueue", env=env,
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        subprocess.run(["go", "mod", "download", MODULE], cwd=HERE / "go" / "kueue", env=env, check=True)
        r = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", MODULE], cwd=HERE / "go" / "kueue", env=env,
                           capture_output=True, text=True, check=True)
    return Path(r.stdout.strip())


def crds(src: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs, the multi-version ones converted by our Kueue's /convert endpoint."""
    out = []
    for f in sorted((src / "config/components/crd/bases").glob("*.yaml")):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
                "conversionReviewVersions": ["v1"]}}
        out.append(crd)
    return out


def webhook_configurations(src: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's Mutating/ValidatingWebhookConfigurations (config/components/webhook/manifests.yaml),
    limited to Kueue's own kinds, each pointing at ``url`` + its path."""
    out = []
    for doc in yaml.safe_load_all((src / "config/components/webhook/manifests.yaml").read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        hooks = []
        for h in doc.get("webhooks") or []:
            path = h["clientConfig"]["service"]["path"]
            if "-kueue-x-k8s-io-" not in path:
                continue
            h["clientConfig"] = {"url": url + path, "caBundle": ca_bundle}
            hooks.append(h)
        mutating = doc["kind"] == "MutatingWebhookConfiguration"
        doc["metadata"] = {"name": WEBHOOK_CONFIGS[0] if mutating else WEBHOOK_CONFIGS[1]}
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def configuration(ports: dict[str, int], cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for the local cluster."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue-health']}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": ports["kueue-webhook"], "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        # No built-in integration: Stoker's operator creates and owns one Workload per TrainingJob.
        # Declaring the kind tells Kueue that TrainingJobs are integrated by an external controller.
        "integrations": {"frameworks": [], "externalFrameworks": ["TrainingJob.v1alpha1.stoker.dev"]},
    }


class KueueProcess:
    """Kueue's controller-manager next to a LocalCluster (same state dir, pid file and log)."""

    def __init__(self, cluster: Any) -> None:
        self.c = cluster
        self.dir = cluster.state_dir / "kueue"
        self.cert_dir = cluster.run_dir / "kueue-certs"
        self.kubeconfig = cluster.state_dir / "kubeconfigs" / "kueue.kubeconfig"

    def running(self) -> bool:
        return self.c.running(NAME)

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.c.port('kueue-webhook')}"

    def up(self, timeout: float = 120) -> "KueueProcess":
        """Build (first time), install the CRDs and webhooks, start Kueue, wait until its
        webhooks answer. Safe to call again."""
        c = self.c
        if self.running() and self._webhooks_answer():
            return self
        t0 = time.monotonic()
        binary = c.tools(NAME)[NAME]
        src = module_dir()
        c._assign_ports(["kueue-webhook", "kueue-health"])
        ports = {k: c.port(k) for k in ("kueue-webhook", "kueue-health")}
        self._certs()
        ca = base64.b64encode((c.pki_dir / "ca.crt").read_bytes()).decode()
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "config.yaml"
        cfg.write_text(yaml.safe_dump(configuration(ports, self.cert_dir), sort_keys=False))
        c.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": NAMESPACE}}, ok=(201, 409))
        self._apply(crds(src, self.webhook_url, ca))
        for crd in crds(src, self.webhook_url, ca):
            c.wait_crd_established(crd["metadata"]["name"])
        pid = read_pid(c.pidfile(NAME))
        if pid:
            stop_group(pid, c.marker)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        argv = [binary, f"--config={cfg}", f"--visibility-server-port={free_port()}",
                "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=info"]
        proc = spawn(self._with_metrics_certs(argv), logfile=c.logfile(NAME), pidfile=c.pidfile(NAME), env=env,
                     die_with_parent=c.die_with_parent)
        c.log(f"[cluster] started kueue (pid {proc.pid}) {self.webhook_url}")
        ctx = ssl._create_unverified_context()
        wait_ready(NAME, lambda: _http_ok(f"http://127.0.0.1:{ports['kueue-health']}/readyz", ctx), proc=proc,
                   logfile=c.logfile(NAME), timeout=timeout)
        # Register the webhooks only once they are served (failurePolicy: Fail).
        self._apply(webhook_configurations(src, self.webhook_url, ca))
        deadline = time.monotonic() + timeout
        while not self._webhooks_answer():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"Kueue's webhooks do not answer (see {c.logfile(NAME)})")
            time.sleep(0.3)
        c.log(f"[cluster] kueue ready ({time.monotonic() - t0:.1f}s)")
        return self

    def down(self) -> bool:
        """Stop Kueue and unregister its webhooks (they would refuse Kueue objects meanwhile)."""
        for kind, name in zip(("mutatingwebhookconfigurations", "validatingwebhookconfigurations"), WEBHOOK_CONFIGS):
            self.c.api("DELETE", f"/apis/admissionregistration.k8s.io/v1/{kind}/{name}", ok=None)
        pid = read_pid(self.c.pidfile(NAME))
        stopped = bool(pid) and stop_group(pid, self.c.marker)
        self.c.pidfile(NAME).unlink(missing_ok=True)
        return stopped

    # ------------------------------------------------------------------ helpers
    def _certs(self) -> None:
        p = self.c.pki_dir
        pki.ensure_serving_cert(p, "kueue-webhook", "kueue-webhook", ["127.0.0.1"], ["localhost"])
        pki.ensure_client_cert(p, "kueue", "kueue-controller-manager", "system:masters")
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        (self.cert_dir / "tls.crt").write_bytes((p / "kueue-webhook.crt").read_bytes())
        (self.cert_dir / "tls.key").write_bytes((p / "kueue-webhook.key").read_bytes())
        (self.cert_dir / "tls.key").chmod(0o600)
        self.kubeconfig.write_text(yaml.safe_dump(pki.kubeconfig(p, self.c.apiserver_url, "kueue"), sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _with_metrics_certs(self, argv: list[str]) -> list[str]:
        """Kueue without its internal certificate management reads a metrics certificate from the
        fixed path /etc/kueue/metrics/certs and exits without it, even with metrics off
        (cmd/kueue/main.go). Kueue gets its own mount namespace where our certificate directory
        is bind-mounted there; the host keeps only the empty mount-point directory (as real
        nodes' mount points). The same pid runs Kueue (unshare and sh exec it)."""
        if (METRICS_CERTS / "tls.crt").exists() and (METRICS_CERTS / "tls.key").exists():
            return argv
        if os.geteuid() != 0:
            raise ClusterError(f"Kueue needs a certificate in {METRICS_CERTS} (a fixed path in cmd/kueue/main.go): "
                               "run as root (it is bind-mounted in Kueue's own mount namespace) or put "
                               "tls.crt/tls.key there")
        METRICS_CERTS.mkdir(parents=True, exist_ok=True)
        script = f'mount --bind "$0" {METRICS_CERTS} && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.cert_dir), *argv]

    def _apply(self, objs: list[dict[str, Any]]) -> None:
        text = yaml.safe_dump_all(objs, sort_keys=False)
        self.c.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=stoker-devcluster",
                       "-f", "-", input=text, timeout=180)

    def _webhooks_answer(self) -> bool:
        """A dry-run create that passes through Kueue's mutating and validating webhooks."""
        flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
                  "metadata": {"name": "stoker-webhook-probe"}}
        try:
            status, _ = self.c.api("POST", "/apis/kueue.x-k8s.io/v1beta2/resourceflavors?dryRun=All", flavor,
                                   ok=None)
        except OSError:
            return False
        return status in (201, 409)
