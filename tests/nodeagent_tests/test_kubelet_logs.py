"""Container logs of process-node pods through the API (`kubectl logs`,
`read_namespaced_pod_log`): the apiserver proxies to the agent's kubelet API
(devcluster/stoker/devcluster/nodeagent/kubeletapi.py) with its kubelet client certificate."""
from __future__ import annotations

import socket
import ssl
import textwrap

import pytest

from stoker.devcluster.nodeagent import kubeletapi as K
from tests.nodeagent_tests.helpers import pod_manifest


# ------------------------------------------------------------------ pure parts
def test_current_instance_starts_at_the_last_recorded_offset():
    assert K.instance_range([0, 10, 25], 40, previous=False) == (25, 40)
    assert K.instance_range([], 40, previous=False) == (0, 40)


def test_previous_instance_is_between_the_last_two_starts():
    assert K.instance_range([0, 10, 25], 40, previous=True) == (10, 25)
    assert K.instance_range([0], 40, previous=True) is None


def test_offsets_past_the_end_are_ignored():
    assert K.instance_range([0, 99], 40, previous=False) == (0, 40)


@pytest.mark.parametrize("data,n,want", [
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 2, b"b\nc"),
    (b"a\nb\n", 5, b"a\nb\n"),
    (b"a\nb\n", 0, b""),
    (b"", 3, b""),
])
def test_tail_lines(data, n, want):
    assert K.tail_lines(data, n) == want


def test_log_path_parsing_rejects_traversal():
    assert K.parse_log_path("/containerLogs/ns/pod/main?follow=true") == ("ns", "pod", "main")
    assert K.parse_log_path("/containerLogs/ns/../main") is None
    assert K.parse_log_path("/containerLogs/ns/pod/%2e%2e") is None
    assert K.parse_log_path("/containerLogs/ns/pod/a%2Fb") is None
    assert K.parse_log_path("/pods") is None


def test_only_the_apiserver_identity_is_authorized():
    subject = lambda **kv: {"subject": tuple(((k, v),) for k, v in kv.items())}  # noqa: E731
    assert K.authorized(subject(organizationName="system:masters", commonName="x"))
    assert K.authorized(subject(commonName="kube-apiserver-kubelet-client"))
    assert not K.authorized(subject(commonName="system:kube-scheduler"))
    assert not K.authorized(None)


# --------------------------------------------------------------- on a cluster
COUNT = textwrap.dedent("""
    import os, sys, time
    n = int(os.environ.get("N", "5"))
    for i in range(n):
        print(f"line {i}", flush=True)
        time.sleep(float(os.environ.get("PAUSE", "0")))
    sys.exit(int(os.environ.get("RC", "0")))
""")


@pytest.mark.cluster
def test_kubectl_logs_tail_and_follow(cluster, pods, process_node):
    pods.apply(pod_manifest("counter", process_node, COUNT,
                            env=[{"name": "N", "value": "6"}, {"name": "PAUSE", "value": "0.3"}]))
    pods.wait_phase("counter", "Running", "Succeeded")
    # -f streams until the container exits: all lines arrive, in order, and kubectl returns.
    out = cluster.kubectl("logs", "-n", pods.ns, "counter", "-f", "--tail=-1").stdout
    assert out.splitlines() == [f"line {i}" for i in range(6)]
    pods.wait_phase("counter", "Succeeded")
    out = cluster.kubectl("logs", "-n", pods.ns, "counter", "--tail=2").stdout
    assert out.splitlines() == ["line 4", "line 5"]


TWICE = textwrap.dedent("""
    import os, time
    if not os.path.exists("ran-once"):   # cwd is the pod's directory: it survives restarts
        open("ran-once", "w").close()
        print("first instance", flush=True)
        raise SystemExit(1)
    print("second instance", flush=True)
    time.sleep(120)
""")


@pytest.mark.cluster
def test_python_client_reads_current_and_previous_instance(kube, pods, process_node):
    pods.apply(pod_manifest("restarts", process_node, TWICE, restart="Always",
                            terminationGracePeriodSeconds=1))
    pods.wait("restarts", lambda p: p and any(c.get("restartCount", 0) >= 1 and "running" in c.get("state", {})
                                              for c in p["status"].get("containerStatuses", [])),
              "running again after one restart")
    read = lambda **kw: kube.core.read_namespaced_pod_log("restarts", pods.ns, container="main", **kw)  # noqa: E731
    pods.wait("restarts", lambda _p: read() != "", "printing its second instance")
    assert read() == "second instance\n"  # the current instance only, not the whole appended file
    assert read(previous=True) == "first instance\n"


@pytest.mark.cluster
def test_missing_log_and_missing_previous_are_clear_errors(cluster, pods, process_node):
    pods.apply(pod_manifest("once", process_node, "print('hi')"))
    pods.wait_phase("once", "Succeeded")
    r = cluster.kubectl("logs", "-n", pods.ns, "once", "--previous", check=False)
    assert r.returncode != 0 and "previous terminated container" in r.stderr


@pytest.mark.cluster
def test_kubelet_api_refuses_other_identities(cluster, process_node):
    status, node = cluster.api("GET", f"/api/v1/nodes/{process_node}")
    ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    assert port > 0

    def get(cert: str | None) -> str:
        ctx = ssl._create_unverified_context()
        if cert:
            ctx.load_cert_chain(cluster.pki_dir / f"{cert}.crt", cluster.pki_dir / f"{cert}.key")
        with socket.create_connection((ip, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(200).decode(errors="replace")

    assert " 200 " in get("apiserver-kubelet-client")
    assert " 403 " in get("scheduler")  # a valid cluster cert, but not the apiserver's identity
    try:
        anonymous = get(None)
    except (ssl.SSLError, OSError):  # the handshake is refused (TLS 1.3 reports it on the first read)
        anonymous = ""
    assert "HTTP/1.1" not in anonymous

