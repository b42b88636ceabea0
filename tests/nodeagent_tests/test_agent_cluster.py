"""The process node agent against the real control plane: pods applied with
kubectl are scheduled onto a process node by kube-scheduler and run as local
processes; the node lifecycle controller notices a stopped agent."""
from __future__ import annotations

import json
import textwrap
import time

import pytest

from tests.nodeagent_tests.helpers import pod_manifest
from tests.recovery_tests.faults import alive

pytestmark = pytest.mark.cluster

FIELD = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}  # noqa: E731


def test_pod_runs_with_its_name_and_ip_and_succeeds(pods, process_node):
    pods.apply(pod_manifest("hello", process_node, textwrap.dedent("""
        import json, os
        print(json.dumps({"name": os.environ["MY_NAME"], "ip": os.environ["MY_IP"],
                          "host": os.environ["HOSTNAME"]}))
    """), env=[{"name": "MY_NAME", **FIELD("metadata.name")}, {"name": "MY_IP", **FIELD("status.podIP")}]))
    pod = pods.wait_phase("hello", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert pod["spec"]["nodeName"] == process_node
    printed = json.loads(pods.log(process_node, "hello"))
    assert printed == {"name": "hello", "ip": pod["status"]["podIP"], "host": "hello"}
    assert pod["status"]["podIP"].startswith("127.") and pod["status"]["podIP"] != pod["status"]["hostIP"]
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")


def test_failing_pod_reports_its_exit_code(pods, process_node):
    pods.apply(pod_manifest("fails", process_node, "import sys; sys.exit(3)"))
    pod = pods.wait_phase("fails", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")


def test_fallback_to_logs_on_error_makes_the_log_tail_the_termination_message(pods, process_node):
    """The kubelet's terminationMessagePolicy FallbackToLogsOnError: a failed container's last
    log lines (80 lines, 2 KiB at most) are its termination message; File (the default) and
    a successful exit keep none."""
    code = "import sys\nfor i in range(200): print('line', i)\nprint('bad config: lr must be > 0')\nsys.exit(2)"
    fallback = pod_manifest("said", process_node, code)
    fallback["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    ok = pod_manifest("ok", process_node, "print('fine')")
    ok["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pods.apply(fallback, pod_manifest("file", process_node, code), ok)
    term = pods.wait_phase("said", "Failed")["status"]["containerStatuses"][0]["state"]["terminated"]
    lines = term["message"].splitlines()
    assert lines[-1] == "bad config: lr must be > 0" and len(lines) == 80 and len(term["message"]) <= 2048
    term = pods.wait_phase("file", "Failed")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert "message" not in term and term["exitCode"] == 2
    term = pods.wait_phase("ok", "Succeeded")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert "message" not in term


def test_deleting_a_pod_sends_sigterm_then_removes_it(pods, process_node, tmp_path):
    marker = tmp_path / "terminated"
    code = textwrap.dedent(f"""
        import signal, sys, time
        def on_term(sig, frame):
            open({str(marker)!r}, "w").write("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """)
    pods.apply(pod_manifest("sleeper", process_node, code, terminationGracePeriodSeconds=20))
    pods.wait("sleeper", lambda p: any(c["type"] == "Ready" and c["status"] == "True"
                                       for c in (p or {}).get("status", {}).get("conditions", [])), "Ready")
    pods.wait("sleeper", lambda p: "ready" in pods.log(process_node, "sleeper"), "printing ready")
    pods.cluster.kubectl("delete", "pod", "sleeper", "-n", pods.ns, "--wait=false")
    pods.wait("sleeper", lambda p: p is None, "gone")
    assert marker.read_text() == "SIGTERM"


def test_restart_on_failure_and_secret_configmap_env(pods, process_node, tmp_path):
    counter = tmp_path / "attempts"
    code = textwrap.dedent(f"""
        import os, sys
        p = {str(counter)!r}
        n = int(open(p).read()) + 1 if os.path.exists(p) else 1
        open(p, "w").write(str(n))
        print(n, os.environ["TOKEN"], os.environ["MODE"], os.environ["cfg_level"], flush=True)
        sys.exit(0 if n >= 3 else 7)
    """)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"token": "t0k3n"}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
          "data": {"mode": "fast", "level": "9"}}
    pod = pod_manifest("flaky", process_node, code, restart="OnFailure", env=[
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}])
    pod["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "cfg"}, "prefix": "cfg_"}]
    pods.apply(secret, cm, pod)
    pod = pods.wait_phase("flaky", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"
    cs = pod["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 2
    assert cs["lastState"]["terminated"]["exitCode"] == 7
    assert pods.log(process_node, "flaky").split("\n")[:3] == ["1 t0k3n fast 9", "2 t0k3n fast 9",
                                                              "3 t0k3n fast 9"]


def test_pods_resolve_service_names_to_endpoint_pod_ips(pods, process_node):
    server = textwrap.dedent("""
        import os, socket
        s = socket.create_server((os.environ["POD_IP"], 7007))
        while True:
            c, _ = s.accept()
            c.sendall(b"echo:" + c.recv(100))
            c.close()
    """)
    client = textwrap.dedent("""
        import os, socket, sys, time
        name = f"echo.{os.environ['NS']}.svc.cluster.local"
        deadline = time.monotonic() + 60
        while True:
            try:
                ip = socket.gethostbyname(name)
                c = socket.create_connection((name, 7007), timeout=5)
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    sys.exit(f"cannot reach {name}: {e}")
                time.sleep(0.2)
        c.sendall(b"ping")
        print(ip, c.recv(100).decode(), socket.gethostbyname("echo"), flush=True)
        # libc callers (C/C++ code) resolve too, through the LD_PRELOAD shim
        import shutil, subprocess
        if shutil.which("getent") and os.environ.get("LD_PRELOAD"):
            print(subprocess.run(["getent", "ahostsv4", "echo"], capture_output=True, text=True).stdout.split()[0])
    """)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
           "spec": {"clusterIP": "None", "selector": {"app": "echo-server"}, "ports": [{"port": 7007}]}}
    srv = pod_manifest("echo-server", process_node, server, env=[{"name": "POD_IP", **FIELD("status.podIP")}])
    cli = pod_manifest("echo-client", process_node, client, env=[{"name": "NS", **FIELD("metadata.namespace")}])
    pods.apply(svc, srv, cli)
    pod = pods.wait_phase("echo-client", "Succeeded", "Failed")
    out = pods.log(process_node, "echo-client")
    assert pod["status"]["phase"] == "Succeeded", out
    server_ip = pods.get("echo-server")["status"]["podIP"]
    import shutil
    c_shim = bool(shutil.which("cc") or shutil.which("gcc")) and bool(shutil.which("getent"))
    assert out.split() == [server_ip, "echo:ping", server_ip] + ([server_ip] if c_shim else [])


def test_stopping_the_agent_makes_the_node_not_ready_and_kills_its_pods(cluster, pods, tmp_path):
    import os
    import uuid

    node = f"pn-lost-{uuid.uuid4().hex[:6]}"
    cluster.start_process_node(node, gpus=0)
    try:
        pidfile = tmp_path / "pid"
        pods.apply(pod_manifest("victim", node, textwrap.dedent(f"""
            import os, time
            open({str(pidfile)!r}, "w").write(str(os.getpid()))
            time.sleep(600)
        """)))
        pods.wait("victim", lambda p: pidfile.exists() and pidfile.read_text(), "started")
        pid = int(pidfile.read_text())
        assert cluster.stop_process_node(node)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"

        def ready_status():
            _, n = cluster.api("GET", f"/api/v1/nodes/{node}")
            return next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")

        deadline = time.monotonic() + 90
        while ready_status() == "True":
            assert time.monotonic() < deadline, "node still Ready 90s after its agent stopped"
            time.sleep(0.5)
        assert ready_status() in ("Unknown", "False")
    finally:
        cluster.stop_process_node(node)
        cluster.delete_nodes([node])



def test_killed_agent_takes_its_processes_and_a_restarted_one_resumes_the_pod(cluster, pods, tmp_path):
    import signal
    import uuid

    node = f"pn-crash-{uuid.uuid4().hex[:6]}"
    cluster.start_process_node(node, gpus=0)
    try:
        pidfile = tmp_path / "pids"
        # The container starts a grandchild in its own session: only the agent's
        # watchdog (not the process group, not PDEATHSIG) can find that one.
        pods.apply(pod_manifest("survivor", node, textwrap.dedent(f"""
            import os, subprocess, time
            child = subprocess.Popen(["sleep", "600"], start_new_session=True)
            with open({str(pidfile)!r}, "a") as f:
                f.write(f"{{os.getpid()}} {{child.pid}}\\n")
            time.sleep(600)
        """), restart="Always"))
        pods.wait("survivor", lambda p: pidfile.exists() and pidfile.read_text().endswith("\n"), "started")
        first = [int(x) for x in pidfile.read_text().split()]
        assert cluster.stop_process_node(node, sig=signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in first):
            assert time.monotonic() < deadline, f"pod processes {first} outlived the SIGKILLed agent"
            time.sleep(0.1)

        cluster.start_process_node(node, gpus=0)
        pod = pods.wait("survivor", lambda p: len(pidfile.read_text().splitlines()) == 2
                        and p["status"]["containerStatuses"][0]["restartCount"] == 1
                        and "running" in p["status"]["containerStatuses"][0]["state"], "running again")
        last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
        assert last["exitCode"] == 137 and "node agent was restarted" in last["message"]
    finally:
        cluster.stop_process_node(node)
        cluster.delete_nodes([node])


def test_gpu_pods_get_their_own_device_ids(pods, process_node):
    code = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    gpu = pod_manifest("gpu", process_node, code)
    gpu["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    pods.apply(gpu, pod_manifest("cpu-only", process_node, code))
    for name in ("gpu", "cpu-only"):
        assert pods.wait_phase(name, "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
    assert pods.log(process_node, "gpu").strip() == "'0'"  # the fixture's node has 1 GPU
    assert pods.log(process_node, "cpu-only").strip() == "''"
