"""The installed chart as the platform's users meet it, on the local control plane's real
RBAC and Pod Security admission (users are impersonated by the admin: `kubectl --as`):

- a user bound to the chart's TrainingJob edit role can create and scale TrainingJobs in
  that namespace and nothing else; the built-in `edit`/`view` roles gain the TrainingJob
  rules by aggregation;
- the operator's pod passes the `restricted` Pod Security Standard with a random UID, and
  with none at all (the platform assigns it, as OpenShift does)."""
from __future__ import annotations

import json
import random
import time
import uuid

import pytest

from tests.operator_tests.conftest import crd, job_manifest, wait_for  # noqa: F401

from .test_chart_install import Release

pytestmark = [pytest.mark.cluster]


@pytest.fixture
def release(helm, cluster, namespace, tmp_path, crd):  # noqa: F811
    rel = Release(helm, cluster, "stoker", namespace, tmp_path)
    yield rel
    if rel.installed:
        rel.run("uninstall", rel.name, "-n", rel.namespace, check=False)


def as_user(cluster, user: str, *args: str, input: str | None = None):
    return cluster.kubectl(f"--as={user}", *args, input=input, check=False)


def forbidden(result) -> bool:
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def tj(name: str) -> str:
    return json.dumps(job_manifest(name, ["python", "train.py"], replicas=1, maxReplicas=2))


def test_a_user_bound_to_the_edit_role_manages_trainingjobs_and_nothing_else(cluster, namespace, release):
    release.install({})
    role = f"stoker-{namespace}-trainingjobs-edit"
    cluster.kubectl("create", "rolebinding", "alice-tj", f"--clusterrole={role}", "--user=alice", "-n", namespace)
    other = f"other-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", other)
    try:
        wait_for("the binding to take effect", lambda: as_user(cluster, "alice", "auth", "can-i", "create",
                                                               "trainingjobs", "-n", namespace).returncode == 0)
        made = as_user(cluster, "alice", "create", "-n", namespace, "-f", "-", input=tj("mine"))
        assert made.returncode == 0, made.stderr
        assert as_user(cluster, "alice", "scale", "tj/mine", "--replicas=2", "-n", namespace).returncode == 0
        assert as_user(cluster, "alice", "get", "tj", "-n", namespace, "-o", "name").stdout.split() == [
            "trainingjob.stoker.dev/mine"]
        # nothing else: not the status (the operator's), not pods, Secrets, ConfigMaps, nor another namespace
        status = as_user(cluster, "alice", "patch", "tj/mine", "-n", namespace, "--subresource=status",
                         "--type=merge", "-p", '{"status":{"phase":"Succeeded"}}')
        assert forbidden(status), status.stderr
        assert forbidden(as_user(cluster, "alice", "get", "pods", "-n", namespace))
        assert forbidden(as_user(cluster, "alice", "get", "secrets", "-n", namespace))
        assert forbidden(as_user(cluster, "alice", "create", "configmap", "x", "-n", namespace))
        assert forbidden(as_user(cluster, "alice", "create", "-n", other, "-f", "-", input=tj("x")))
        assert forbidden(as_user(cluster, "alice", "get", "tj", "-A"))
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_builtin_edit_and_view_roles_gain_trainingjobs_by_aggregation(cluster, namespace, release):
    release.install({})
    cluster.kubectl("create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "carol-view", "--clusterrole=view", "--user=carol", "-n", namespace)
    # the controller-manager's aggregation controller copies the rules into edit/view
    wait_for("edit to aggregate the TrainingJob rules", lambda: as_user(
        cluster, "bob", "auth", "can-i", "create", "trainingjobs", "-n", namespace).returncode == 0, timeout=60)
    assert as_user(cluster, "bob", "create", "-n", namespace, "-f", "-", input=tj("bobs")).returncode == 0
    wait_for("view to aggregate", lambda: as_user(cluster, "carol", "auth", "can-i", "list", "trainingjobs",
                                                  "-n", namespace).returncode == 0, timeout=60)
    assert as_user(cluster, "carol", "get", "tj", "bobs", "-n", namespace).returncode == 0
    assert forbidden(as_user(cluster, "carol", "delete", "tj", "bobs", "-n", namespace))
    assert forbidden(as_user(cluster, "carol", "create", "-n", namespace, "-f", "-", input=tj("carols")))


def operator_pod(cluster, namespace: str) -> dict | None:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator",
                          "-o", "json").stdout
    items = json.loads(out)["items"]
    return items[0] if items else None


def replica_set_events(cluster, namespace: str) -> str:
    return cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate",
                           "-o", "jsonpath={.items[*].message}", check=False).stdout


@pytest.mark.parametrize("uid", ["random", "assigned"])
def test_the_operator_pod_is_admitted_as_restricted_with_any_uid(cluster, namespace, release, uid):
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    if uid == "random":
        n = random.randint(1000, 2**31 - 1)
        print(f"runAsUser/runAsGroup/fsGroup = {n}")
        sc = {"runAsUser": n, "runAsGroup": n, "fsGroup": n}
    else:
        sc = {"runAsUser": None, "runAsGroup": None, "fsGroup": None}
    release.install({"podSecurityContext": sc})
    # The ReplicaSet's pod is created only if Pod Security admission lets it in (it then stays
    # Pending: the chart's nodeSelector here matches no node).
    pod = wait_for("the operator pod admitted", lambda: operator_pod(cluster, namespace), timeout=60,
                   on_timeout=lambda: replica_set_events(cluster, namespace))
    psc = pod["spec"]["securityContext"]
    if uid == "random":
        assert psc["runAsUser"] == sc["runAsUser"] and psc["fsGroup"] == sc["fsGroup"]
    else:
        assert "runAsUser" not in psc and psc["runAsNonRoot"] is True
    # and a pod that breaks the standard is refused in this namespace (the check is live)
    bad = json.loads(json.dumps(pod["spec"]))
    bad["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    r = cluster.kubectl("create", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"bad-{int(time.time())}"}, "spec": bad}))
    assert r.returncode != 0 and "violates PodSecurity" in r.stderr, r.stderr
