"""Authentication and RBAC are enforced; ServiceAccount tokens work."""
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client

pytestmark = pytest.mark.cluster


def _get(cluster, path, token=None):
    ctx = ssl.create_default_context(cafile=str(cluster.pki_dir / "ca.crt"))
    req = urllib.request.Request(cluster.apiserver_url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_request_without_credentials_is_unauthorized(cluster, namespace):
    status, _ = _get(cluster, f"/api/v1/namespaces/{namespace}/pods")
    assert status == 401


def test_serviceaccount_token_needs_rbac(cluster, kube, namespace):
    kube.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader")))
    token = kube.core.create_namespaced_service_account_token(
        "reader", namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["https://kubernetes.default.svc.cluster.local"], expiration_seconds=600)),
    ).status.token
    path = f"/api/v1/namespaces/{namespace}/pods"

    status, body = _get(cluster, path, token)
    assert status == 403, body
    assert f"system:serviceaccount:{namespace}:reader" in body.get("message", "")

    kube.rbac.create_namespaced_role(namespace, client.V1Role(
        metadata=client.V1ObjectMeta(name="pod-reader"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])]))
    kube.rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="reader-pods"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)]))

    deadline = time.monotonic() + 30  # the authorizer sees the binding through its informer
    while (status := _get(cluster, path, token)[0]) == 403 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200
    # The binding is namespaced: other namespaces stay forbidden.
    assert _get(cluster, "/api/v1/namespaces/default/pods", token)[0] == 403
