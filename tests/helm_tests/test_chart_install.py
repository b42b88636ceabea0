"""`helm install` into the local control plane, then the operator run as a local process
with the chart's ServiceAccount identity (a TokenRequest token) and the chart's own
environment: its RBAC is enough to take a real torchrun job to Succeeded, and requests
outside it are Forbidden. Then `helm upgrade` and `helm uninstall` (the CRD stays).

The operator Deployment itself cannot run here (no container runtime, no images): it is
pinned to a node label no node has, so its pod stays Pending and never acts."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from stoker.common.auth import key_id
from stoker.operator.rendezvous import port_open
from tests.operator_tests.conftest import (OperatorProcess, active_label, create_job, free_port, get_job, job_manifest,
                                           process_pool, stand_in_pod, wait_for, worker_pods)

from .conftest import CHART, run_helm

pytestmark = [pytest.mark.cluster]

__all__ = ["process_pool"]  # the operator tests' three process nodes, shared when both run

NO_NODE = {"stoker.dev/helm-test": "operator-pod-never-scheduled"}
ALLREDUCE = str(CHART.parents[1] / "tests" / "operator_tests" / "scripts" / "allreduce.py")


class Release:
    def __init__(self, helm: str, cluster, name: str, namespace: str, tmp_path) -> None:
        self.helm, self.cluster, self.name, self.namespace, self.tmp = helm, cluster, name, namespace, tmp_path
        self.installed = False

    def _values(self, values: dict) -> str:
        f = self.tmp / f"values-{time.monotonic_ns()}.json"
        f.write_text(json.dumps({"nodeSelector": NO_NODE, **values}))
        return str(f)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_helm(self.helm, *args, "--kubeconfig", str(self.cluster.kubeconfig), check=check)

    def install(self, values: dict) -> str:
        r = self.run("install", self.name, str(CHART), "-n", self.namespace, "-f", self._values(values))
        self.installed = True
        return r.stdout

    def upgrade(self, values: dict) -> str:
        return self.run("upgrade", self.name, str(CHART), "-n", self.namespace, "-f", self._values(values)).stdout

    def uninstall(self) -> None:
        self.run("uninstall", self.name, "-n", self.namespace, "--wait")
        self.installed = False

    def manifest(self) -> list[dict]:
        out = self.run("get", "manifest", self.name, "-n", self.namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture
def release(helm, cluster, namespace, tmp_path):
    rel = Release(helm, cluster, "stoker", namespace, tmp_path)
    yield rel
    if rel.installed:
        rel.run("uninstall", rel.name, "-n", rel.namespace, check=False)


def can_i(cluster, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i` as the ServiceAccount. `resource` is TYPE, TYPE/NAME, or
    TYPE:SUBRESOURCE (kubectl reads TYPE/X as a name, so subresources use a colon here)."""
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    sub = []
    if ":" in resource:
        resource, subresource = resource.split(":")
        sub = [f"--subresource={subresource}"]
    r = cluster.kubectl("auth", "can-i", verb, resource, *sub, f"--as={sa}", *scope, check=False)
    answer = r.stdout.strip()
    assert answer in ("yes", "no"), r.stderr
    return answer == "yes"


def token_kubeconfig(cluster, namespace: str, sa: str, path) -> str:
    """A kubeconfig that authenticates as the ServiceAccount (TokenRequest API)."""
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def chart_env(manifest: list[dict], ports: dict[str, int]) -> dict[str, str]:
    """The operator container's environment as the chart renders it, made runnable on
    loopback: service addresses -> 127.0.0.1, ports -> free local ones."""
    dep = next(o for o in manifest if o["kind"] == "Deployment" and o["metadata"]["name"] == "stoker")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {k: re.sub(r"\$\([A-Z0-9_]+_SERVICE_HOST\)", "127.0.0.1", v) for k, v in env.items()}
    host, _ = env["STOKER_OPERATOR_HEARTBEAT_ADDRESS"].rsplit(":", 1)
    env["STOKER_OPERATOR_HEARTBEAT_ADDRESS"] = f"{host}:{ports['heartbeat']}"
    env["STOKER_OPERATOR_METRICS_PORT"] = str(ports["metrics"])
    env["STOKER_OPERATOR_HEALTH_PORT"] = str(ports["health"])
    if env["STOKER_OPERATOR_RENDEZVOUS_PORT"] != "0":
        env["STOKER_OPERATOR_RENDEZVOUS_PORT"] = str(ports["rendezvous"])
    env.pop("HOME", None)  # the test process's home, not the image's /tmp
    # Process nodes mount no volumes: their pods take the launcher from this environment,
    # not from the launcher volume (real nodes: tests/realnodes_tests).
    env["STOKER_OPERATOR_LAUNCHER_IMAGE"] = ""
    return env


def start_chart_store(manifest: list[dict], kube, namespace: str, port: int, log: Path):
    """The chart's separate rendezvous store as its Deployment runs it (the command from the
    manifest, the install key from the release's Secret) on a local port. Returns (process,
    the environment the operator needs for it); (None, {}) when the operator hosts the store."""
    dep = next((o for o in manifest if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-rendezvous")),
               None)
    if dep is None:
        return None, {}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    secret = kube.core.read_namespaced_secret(f"{dep['metadata']['name']}-key", namespace)
    key = {"STOKER_OPERATOR_RENDEZVOUS_KEY": base64.b64decode(secret.data["key"]).decode()}
    argv = [sys.executable if a == "python" else a for a in container["command"]]
    argv[argv.index("--port") + 1] = str(port)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **key}, stdout=out, stderr=subprocess.STDOUT)
    wait_for("the chart's rendezvous store", lambda: port_open("127.0.0.1", port), timeout=60,
             on_timeout=lambda: log.read_text(errors="replace"))
    return proc, key


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except OSError:
        return 0


def api_status(kubeconfig: str, method: str, path: str, body: dict | None = None) -> int:
    """HTTP status of one request made with the kubeconfig's bearer token."""
    import base64
    import ssl
    import urllib.error

    cfg = yaml.safe_load(open(kubeconfig))
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    req = urllib.request.Request(cluster["server"] + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {user['token']}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_operator_authenticates_with_a_service_account_token(cluster, kube, namespace, release, tmp_path):
    """As in its pod: the operator's only credential is a ServiceAccount token."""
    release.install({})
    cluster.wait_crd_established("trainingjobs.stoker.dev")
    kubeconfig = token_kubeconfig(cluster, namespace, "stoker", tmp_path / "sa.kubeconfig")
    ports = {k: free_port() for k in ("metrics", "health", "rendezvous", "heartbeat")}
    op = OperatorProcess(tmp_path / "sa.kubeconfig", namespace, tmp_path / "operator.log",
                         extra_env={**chart_env(release.manifest(), ports), "STOKER_OPERATOR_RENDEZVOUS_PORT": "0",
                                    "STOKER_OPERATOR_KUBECONFIG": kubeconfig})
    op.metrics_port = ports["metrics"]
    try:
        op.start().wait_ready()
        create_job(kube, namespace, job_manifest("auth", ["python", "train.py"], replicas=1, node_selector=NO_NODE))
        # Any status the operator writes proves its requests were authenticated and allowed.
        wait_for("the operator to write the job's status",
                 lambda: get_job(kube, namespace, "auth").get("status", {}).get("phase"), timeout=30,
                 on_timeout=op.tail)
    finally:
        op.stop()


@pytest.mark.torch
@pytest.mark.slow
def test_install_then_operator_under_the_chart_identity_runs_a_job_and_nothing_more(
        cluster, kube, namespace, release, process_pool, tmp_path):
    sa = f"system:serviceaccount:{namespace}:stoker"
    notes = release.install({})
    assert "kubectl get tj" in notes and "kubectl stoker get" in notes
    cluster.wait_crd_established("trainingjobs.stoker.dev")

    kinds = {(o["kind"], o["metadata"]["name"]) for o in release.manifest()}
    assert {("ServiceAccount", "stoker"), ("Role", "stoker"), ("RoleBinding", "stoker"), ("Service", "stoker"),
            ("Deployment", "stoker")} <= kinds
    dep = kube.apps.read_namespaced_deployment("stoker", namespace)
    assert dep.spec.template.spec.security_context.run_as_non_root is True

    # Everything the operator calls is allowed, in its namespace.
    for verb, resource in [("get", "trainingjobs.stoker.dev"), ("list", "trainingjobs.stoker.dev"),
                           ("watch", "trainingjobs.stoker.dev"), ("patch", "trainingjobs.stoker.dev"),
                           ("delete", "trainingjobs.stoker.dev"), ("patch", "trainingjobs.stoker.dev:status"),
                           ("list", "pods"), ("watch", "pods"), ("create", "pods"), ("delete", "pods"),
                           ("create", "events.events.k8s.io"), ("get", "secrets"), ("create", "secrets")]:
        assert can_i(cluster, sa, verb, resource, namespace), f"{sa} cannot {verb} {resource}"
    # ... and nothing else.
    for verb, resource, ns in [("list", "secrets", namespace), ("watch", "secrets", namespace),
                               ("update", "secrets", namespace), ("delete", "secrets", namespace),
                               ("get", "secrets", "default"), ("create", "trainingjobs.stoker.dev", namespace),
                               ("update", "pods", namespace), ("patch", "pods", namespace),
                               ("create", "pods:exec", namespace), ("patch", "trainingjobs.stoker.dev:scale", namespace),
                               ("update", "trainingjobs.stoker.dev:status", namespace), ("create", "roles", namespace),
                               ("create", "clusterroles", None), ("patch", "nodes", None),
                               ("list", "pods", "default"), ("list", "trainingjobs.stoker.dev", "default"),
                               ("get", "namespaces", None), ("delete", "namespaces", None),
                               ("create", "serviceaccounts:token", namespace)]:
        assert not can_i(cluster, sa, verb, resource, ns), f"{sa} may {verb} {resource} in {ns or 'the cluster'}"

    # Real requests with the ServiceAccount's token are refused too.
    kubeconfig = token_kubeconfig(cluster, namespace, "stoker", tmp_path / "sa.kubeconfig")
    cluster.kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=k=v")
    assert api_status(kubeconfig, "DELETE", f"/api/v1/namespaces/{namespace}/secrets/creds") == 403
    assert api_status(kubeconfig, "GET", f"/api/v1/namespaces/{namespace}/secrets") == 403
    assert api_status(kubeconfig, "GET", "/api/v1/namespaces/default/secrets") == 403
    assert api_status(kubeconfig, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "escalate"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}) == 403
    assert api_status(kubeconfig, "GET", f"/api/v1/namespaces/{namespace}/pods") == 200

    # The operator, with the chart's environment and the ServiceAccount's identity.
    ports = {k: free_port() for k in ("metrics", "health", "rendezvous", "heartbeat")}
    env = chart_env(release.manifest(), ports)
    assert env["STOKER_OPERATOR_NAMESPACES"] == namespace
    store, key = start_chart_store(release.manifest(), kube, namespace, ports["rendezvous"], tmp_path / "store.log")
    assert store is not None, "the chart runs the store apart from the operator by default"
    op = OperatorProcess(tmp_path / "sa.kubeconfig", namespace, tmp_path / "operator.log", rendezvous=True,
                         extra_env={**env, **key})
    op.metrics_port, op.rendezvous_port = ports["metrics"], ports["rendezvous"]
    op.env.update({"STOKER_OPERATOR_KUBECONFIG": kubeconfig, "STOKER_OPERATOR_RESYNC_SECONDS": "1"})
    try:
        op.start().wait_ready()
        # The liveness/readiness probe path the Deployment uses answers.
        wait_for("kopf /healthz", lambda: http_status(f"http://127.0.0.1:{ports['health']}/healthz") == 200,
                 timeout=60, on_timeout=op.tail)

        out = tmp_path / "out"
        out.mkdir()
        create_job(kube, namespace, job_manifest("rbac", [sys.executable, ALLREDUCE], replicas=2,
                                                 node_selector=process_pool, env={"OUT_DIR": str(out)}))
        wait_for("job Succeeded under the chart's RBAC",
                 lambda: get_job(kube, namespace, "rbac").get("status", {}).get("phase") == "Succeeded",
                 timeout=180, on_timeout=lambda: f"{get_job(kube, namespace, 'rbac').get('status')}\n{op.tail(60)}")
        assert sorted(p["status"]["phase"] for p in worker_pods(kube, namespace, "rbac")) == ["Succeeded"] * 2
        events = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=rbac").items
        assert events, "the operator could not post its Events"
        # The heartbeat service is on (the chart sets its address): the job's token Secret was
        # created with the chart's secrets get/create grant.
        from stoker.operator.heartbeats import secret_name

        token_secret = kube.core.read_namespaced_secret(
            secret_name("rbac", f"-{key_id(key['STOKER_OPERATOR_RENDEZVOUS_KEY'])}"), namespace)
        assert token_secret.metadata.owner_references[0].name == "rbac"
    finally:
        op.stop()
        store.terminate()
        store.wait(10)
    log = (tmp_path / "operator.log").read_text(errors="replace")
    # Any refusal (kopf's own scans included) means the chart's RBAC misses a grant.
    refusals = [line for line in log.splitlines()
                if re.search(r"Forbidden|forbidden|\b403\b|Not enough permissions", line)]
    assert not refusals, "\n".join(refusals[:10])

    # helm upgrade: a changed value reaches the Deployment; a newly served namespace gets its Role.
    other = f"{namespace[:55]}-b"
    kube.core.create_namespace({"metadata": {"name": other}})
    try:
        assert not can_i(cluster, sa, "list", "pods", other)
        release.upgrade({"operator": {"logLevel": "DEBUG"}, "watch": {"namespaces": [namespace, other]}})
        envs = {e.name: e.value for e in kube.apps.read_namespaced_deployment("stoker", namespace)
                .spec.template.spec.containers[0].env}
        assert envs["STOKER_OPERATOR_LOG_LEVEL"] == "DEBUG"
        assert envs["STOKER_OPERATOR_NAMESPACES"] == f"{namespace},{other}"
        assert can_i(cluster, sa, "create", "pods", other)
        status = json.loads(release.run("status", "stoker", "-n", namespace, "-o", "json").stdout)
        assert status["version"] == 2 and status["info"]["status"] == "deployed"

        # helm uninstall removes what the chart templated; the CRD (crds/) and the jobs stay.
        release.uninstall()
        assert not can_i(cluster, sa, "create", "pods", namespace)
        assert not can_i(cluster, sa, "create", "pods", other)
        assert kube.apps.list_namespaced_deployment(namespace).items == []
        assert kube.apiext.read_custom_resource_definition("trainingjobs.stoker.dev")
        assert get_job(kube, namespace, "rbac")["status"]["phase"] == "Succeeded"
    finally:
        kube.core.delete_namespace(other, propagation_policy="Background")


def test_cluster_mode_install_grants_every_namespace_through_one_cluster_role(cluster, kube, namespace, helm,
                                                                             tmp_path):
    # A release name of its own: cluster-scoped names must not collide with parallel tests.
    rel = Release(helm, cluster, namespace[-20:].strip("-") or "stoker-cluster", namespace, tmp_path)
    rel.name = f"c{rel.name}"
    full = rel.name if "stoker" in rel.name else f"{rel.name}-stoker"
    sa = f"system:serviceaccount:{namespace}:{full}"
    try:
        rel.install({"watch": {"mode": "cluster"}, "replicaCount": 2})
        assert kube.rbac.read_cluster_role_binding(full).subjects[0].name == full
        for verb, resource in [("list", "trainingjobs.stoker.dev"), ("watch", "pods"), ("create", "pods"),
                               ("patch", "trainingjobs.stoker.dev:status"), ("watch", "customresourcedefinitions"),
                               ("watch", "clusterkopfpeerings.kopf.dev")]:
            assert can_i(cluster, sa, verb, resource, None), f"{sa} cannot {verb} {resource} cluster-wide"
        assert can_i(cluster, sa, "patch", f"clusterkopfpeerings.kopf.dev/{full}", None)
        assert not can_i(cluster, sa, "patch", "clusterkopfpeerings.kopf.dev/someone-else", None)
        for verb, resource in [("list", "secrets"), ("list", "namespaces"), ("delete", "nodes"), ("patch", "nodes"),
                               ("create", "clusterrolebindings"), ("update", "trainingjobs.stoker.dev")]:
            assert not can_i(cluster, sa, verb, resource, None), f"{sa} may {verb} {resource}"
        # The operator creates the peering object the replicas share (its CRD is in crds/).
        assert can_i(cluster, sa, "create", "clusterkopfpeerings.kopf.dev", None)
        cluster.wait_crd_established("clusterkopfpeerings.kopf.dev")
        assert kube.apps.read_namespaced_deployment(f"{full}-rendezvous", namespace).spec.replicas == 1
    finally:
        rel.run("uninstall", rel.name, "-n", namespace, "--wait", check=False)
    assert not can_i(cluster, sa, "list", "pods", None)


def test_two_replicas_sharing_the_charts_peering_object_exactly_one_acts(cluster, kube, namespace, release, tmp_path):
    release.install({"replicaCount": 2})
    cluster.wait_crd_established("kopfpeerings.kopf.dev")
    kubeconfig = token_kubeconfig(cluster, namespace, "stoker", tmp_path / "sa.kubeconfig")
    install_key = kube.core.read_namespaced_secret("stoker-rendezvous-key", namespace).data["key"]
    ops = []
    try:
        for i in range(2):
            ports = {k: free_port() for k in ("metrics", "health", "rendezvous", "heartbeat")}
            env = {**chart_env(release.manifest(), ports), "STOKER_OPERATOR_KUBECONFIG": kubeconfig,
                   "STOKER_OPERATOR_RESYNC_SECONDS": "1", **stand_in_pod(kube, namespace, f"op-{i}"),
                   "STOKER_OPERATOR_RENDEZVOUS_KEY": base64.b64decode(install_key).decode()}
            assert env["STOKER_OPERATOR_PEERING"] == "stoker" and env["STOKER_OPERATOR_RENDEZVOUS_STORE"] == "separate"
            op = OperatorProcess(tmp_path / "sa.kubeconfig", namespace, tmp_path / f"operator-{i}.log", extra_env=env)
            op.metrics_port = ports["metrics"]
            ops.append(op.start())
        for op in ops:
            op.wait_ready()
        # With the chart's grants, the replica that acts labels its pod for the Service (heartbeats
        # go there alone) and the other says "false". The job comes once the peering has settled:
        # while both replicas start, kopf lets each resume before it sees the other, and a job
        # created in that window may be handled by the replica that pauses a moment later (seen
        # in CI: the pods were created by the standby; harmless, pod creation is idempotent).
        labels = lambda: [active_label(kube, namespace, f"op-{i}") for i in range(2)]  # noqa: E731
        wait_for("exactly one replica's pod labelled active", lambda: sorted(labels()) == ["false", "true"],
                 timeout=60, on_timeout=lambda: "\n---\n".join(op.tail(15) for op in ops))
        active = labels().index("true")
        create_job(kube, namespace, job_manifest("peer", ["python", "train.py"], replicas=2, node_selector=NO_NODE))
        wait_for("one replica to reconcile the job",
                 lambda: get_job(kube, namespace, "peer").get("status", {}).get("phase"), timeout=60,
                 on_timeout=lambda: "\n---\n".join(op.tail(15) for op in ops))
        actors = [i for i, op in enumerate(ops) if "created worker pod" in op.log_path.read_text()]
        assert actors == [active], f"replicas that created pods: {actors}; labelled active: {active}"
        assert labels()[active] == "true"
        # The operator created the peering object with the chart's grants.
        assert cluster.kubectl("get", "kopfpeering", "stoker", "-n", namespace).returncode == 0
        # The job's token Secret is the one named for the install key (the separate store checks it).
        assert kube.core.read_namespaced_secret(f"stoker-peer-token-{key_id(base64.b64decode(install_key).decode())}",
                                                namespace)
        # An upgrade keeps the install key: a new one would refuse every running job's token.
        release.upgrade({"replicaCount": 2, "operator": {"logLevel": "DEBUG"}})
        assert kube.core.read_namespaced_secret("stoker-rendezvous-key", namespace).data["key"] == install_key
    finally:
        for op in ops:
            op.stop()
