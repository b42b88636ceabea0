"""Real nodes: kubelets built from the pinned Kubernetes module, containerd, CNI, kube-proxy
and CoreDNS, in network namespaces of their own; the fake-GPU device plugin; and a host left
exactly as it was after `down`."""
from __future__ import annotations

import time

import pytest

from stoker.devcluster.realnodes import images
from stoker.devcluster.realnodes.layout import CLUSTER_DNS_IP
from tests.realnodes_tests import hoststate
from tests.realnodes_tests.conftest import GPUS_PER_NODE

pytestmark = [pytest.mark.realnodes, pytest.mark.cluster, pytest.mark.slow]

NODES = ["real-node-0", "real-node-1"]


def busybox() -> str:
    """The busybox image's reference (hashes the host's /bin/busybox, which `make
    node-packages` installs): asked for when a test runs, never at collection, so a machine
    without the node packages collects this file (and skips it) like any other."""
    return images.busybox_image().ref()


def pod(name: str, node: str, script: str, **container) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": busybox(), "imagePullPolicy": "Never",
                                     "command": ["/bin/busybox", "sh", "-c", script], **container}]}}


def http_get(kube, client: str, host: str, port: int) -> str:
    """An HTTP GET from inside pod ``client`` (busybox nc; its wget crashes when static)."""
    return kube.exec(client, "/bin/busybox", "sh", "-c",
                     f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 5 {host} {port}").stdout


def test_nodes_are_kubelets_on_containerd_with_their_own_addresses(real_cluster):
    import json
    nodes = json.loads(real_cluster.kubectl("get", "nodes", "-l", "stoker.dev/real-node=true",
                                            "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == NODES
    ips = set()
    for n in nodes:
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.35.4"
        assert info["containerRuntimeVersion"].startswith("containerd://")
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        ips |= {a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"}
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == str(GPUS_PER_NODE)
    assert len(ips) == 2


def test_pods_reach_each_other_across_nodes_by_ip_service_and_dns_name(kube_ns):
    web = pod("web", NODES[1], "mkdir /www && echo hello-$(hostname) > /www/index.html && "
                               "exec /bin/busybox httpd -f -p 8080 -h /www")
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    client = pod("client", NODES[0], "exec /bin/busybox sleep 3600")
    kube_ns.apply(web, svc, client)
    web_ip = kube_ns.running("web")["status"]["podIP"]
    assert kube_ns.running("client")["spec"]["nodeName"] != kube_ns.get("pod", "web")["spec"]["nodeName"]
    assert "hello-web" in http_get(kube_ns, "client", web_ip, 8080)            # pod IP, other node
    cluster_ip = kube_ns.get("service", "web")["spec"]["clusterIP"]
    assert "hello-web" in http_get(kube_ns, "client", cluster_ip, 80)          # kube-proxy
    name = f"web.{kube_ns.ns}.svc.cluster.local"
    out = kube_ns.exec("client", "/bin/busybox", "nslookup", name, CLUSTER_DNS_IP).stdout
    assert cluster_ip in out, out                                                # CoreDNS
    resolv = kube_ns.exec("client", "/bin/busybox", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {CLUSTER_DNS_IP}" in resolv


def test_pods_reach_the_apiserver_through_the_kubernetes_service(kube_ns):
    kube_ns.apply(pod("api", NODES[0], "exec /bin/busybox sleep 3600"))
    kube_ns.running("api")
    r = kube_ns.exec("api", "/bin/busybox", "sh", "-c",
                     "echo | /bin/busybox nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT; echo rc=$?")
    assert "rc=0" in r.stdout, r.stdout


def test_kubectl_logs_and_exec_go_through_the_kubelet(kube_ns):
    kube_ns.apply(pod("talker", NODES[1], "echo line-one; echo line-two; exec /bin/busybox sleep 3600"))
    kube_ns.running("talker")
    logs = kube_ns.c.kubectl("logs", "-n", kube_ns.ns, "talker").stdout
    assert logs.split() == ["line-one", "line-two"]
    assert kube_ns.exec("talker", "/bin/busybox", "hostname").stdout.strip() == "talker"


def test_a_gpu_request_is_allocated_by_the_kubelet_through_the_device_plugin(kube_ns):
    kube_ns.apply(pod("one-gpu", NODES[0], "echo gpus=$NVIDIA_VISIBLE_DEVICES; exec /bin/busybox sleep 3600",
                      resources={"limits": {"nvidia.com/gpu": 1}}))
    kube_ns.running("one-gpu")
    logs = kube_ns.c.kubectl("logs", "-n", kube_ns.ns, "one-gpu").stdout.strip()
    ids = logs.removeprefix("gpus=").split(",")
    assert len(ids) == 1 and ids[0].startswith(f"{NODES[0]}-gpu-"), logs


def test_a_gpu_request_beyond_capacity_stays_pending_with_the_schedulers_reason(kube_ns):
    greedy = pod("greedy", NODES[0], "true", resources={"limits": {"nvidia.com/gpu": GPUS_PER_NODE + 1}})
    del greedy["spec"]["nodeName"]                   # let the scheduler decide
    kube_ns.apply(greedy)
    p = kube_ns.wait("pod", "greedy", lambda p: any(
        c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
        for c in p["status"].get("conditions", [])), "Unschedulable", timeout=60)
    cond = next(c for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond
    time.sleep(3)
    assert kube_ns.get("pod", "greedy")["status"]["phase"] == "Pending"


GLOO = """
import os, socket, torch, torch.distributed as dist
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="tcp://" + os.environ["MASTER"] + ":29500",
                        rank=rank, world_size=2)
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print("rank", rank, "on", os.environ["NODE"], "sum", t.item(), "torch", torch.__version__, flush=True)
dist.destroy_process_group()
"""


def python_image(real_cluster):
    """The Python image (Debian base from mmdebstrap, torch without its CUDA libraries,
    stoker), built here once per content and imported into every node. (torch's CUDA
    build will not import without its CUDA runtime libraries, ~3 GB: the pods mount them
    read-only from the environment the image was made from, see CUDA_LIBS.)"""
    from stoker.devcluster.local import cache_dir
    from stoker.devcluster.realnodes import pyimages
    ref, archive = pyimages.stoker_image(cache_dir() / "images", log=print)
    real_cluster.real_nodes().import_image(archive)
    return ref


def cuda_libs() -> tuple[dict, dict]:
    """(volume, mount) of the CUDA runtime libraries torch loads at import, from the host."""
    from stoker.devcluster.realnodes import pyimages
    from tests.realnodes_tests import operator_helm
    return operator_helm.cuda_libs(pyimages.SITE)


def test_torch_gloo_allreduce_across_the_two_nodes_in_the_python_image(real_cluster, kube_ns):
    """One rank per node; rank 1 finds rank 0 through a Service name (CoreDNS, kube-proxy)."""
    ref = python_image(real_cluster)
    ranks = []
    for rank, node in enumerate(NODES):
        p = pod(f"gloo-{rank}", node, "")
        p["spec"]["containers"][0].update({
            "image": ref, "command": ["python", "-c", GLOO],
            "env": [{"name": "RANK", "value": str(rank)}, {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
                    {"name": "MASTER", "value": f"gloo-master.{kube_ns.ns}.svc.cluster.local"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "volumeMounts": [cuda_libs()[1]]})
        p["spec"]["volumes"] = [cuda_libs()[0]]
        ranks.append(p)
    master = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gloo-master"},
              "spec": {"selector": {"app": "gloo-0"}, "ports": [{"port": 29500}]}}
    kube_ns.apply(master, *ranks)
    for rank, node in enumerate(NODES):
        kube_ns.wait("pod", f"gloo-{rank}", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
                     "finished", timeout=300)
        out = kube_ns.c.kubectl("logs", "-n", kube_ns.ns, f"gloo-{rank}").stdout
        assert f"rank {rank} on {node} sum 3.0" in out, out
        assert kube_ns.get("pod", f"gloo-{rank}")["status"]["phase"] == "Succeeded"


def test_the_helm_installed_operator_runs_a_two_node_gloo_job_to_succeeded(real_cluster, kube_ns, tmp_path):
    """`helm install charts/stoker` with the images built here (the operator's has no torch):
    the operator runs as the chart's Deployment (in-cluster config, its ServiceAccount and RBAC) on a real node; a
    2-worker gloo TrainingJob, one worker per node, reaches Succeeded through rendezvous
    and heartbeats over the operator's Service."""
    import json
    from tests.realnodes_tests import operator_helm
    ref = python_image(real_cluster)
    operator_helm.helm_install(real_cluster, kube_ns.ns, tmp_path)
    real_cluster.kubectl("rollout", "status", "deployment/stoker", "-n", kube_ns.ns, "--timeout=180s",
                         timeout=200)
    # The operator's image has no torch: the rendezvous store it hosts is torch-free.
    r = real_cluster.kubectl("exec", "-n", kube_ns.ns, "deploy/stoker", "--", "python", "-c",
                             "import importlib.util as u; print('torch' if u.find_spec('torch') else 'no torch')")
    assert r.stdout.strip() == "no torch", r.stdout + r.stderr
    real_cluster.create_s3_secret(kube_ns.ns)
    kube_ns.apply(operator_helm.job("ring", ref, cuda_libs()))
    operator_helm.wait_phase(real_cluster, kube_ns.ns, "ring", ("Succeeded",), timeout=300)
    pods = json.loads(real_cluster.kubectl("get", "pods", "-n", kube_ns.ns, "-l", "stoker.dev/job-name=ring",
                                           "-o", "json").stdout)["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == NODES
    logs = "".join(real_cluster.kubectl("logs", "-n", kube_ns.ns, p["metadata"]["name"]).stdout for p in pods)
    assert logs.count("world 2 sum 3.0") == 2, logs

PROBE = """
import datetime as dt, socket, sys
host, port, victim = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
s.sendall(f"STOKER-RDZV/1 {victim} forged-token\\n".encode())
print("preamble:", s.recv(200).decode().strip(), flush=True)
from torch.distributed import TCPStore
try:
    TCPStore(host, port, is_master=False, timeout=dt.timedelta(seconds=5)).set("torch.rendezvous.x", "forged")
    print("raw: reached", flush=True)
except Exception as e:
    print("raw: refused", type(e).__name__, flush=True)
"""


def test_an_ha_install_runs_a_job_through_its_locked_separate_store(real_cluster, kube_ns, tmp_path):
    """replicaCount 2: two operator replicas (kopf peering) and the separate rendezvous store,
    all from the operator's image, on real nodes. A 2-worker job reaches Succeeded through the
    store's gateway (tokens derived from the chart's install key); a pod of another namespace
    that names the job with a forged token, or speaks TCPStore without a preamble, is refused."""
    import json
    from tests.realnodes_tests import operator_helm
    ref = python_image(real_cluster)
    operator_helm.helm_install(real_cluster, kube_ns.ns, tmp_path, replicaCount=2)
    for deploy in ("stoker", "stoker-rendezvous"):
        real_cluster.kubectl("rollout", "status", f"deployment/{deploy}", "-n", kube_ns.ns, "--timeout=240s",
                             timeout=260)
    real_cluster.create_s3_secret(kube_ns.ns)
    kube_ns.apply(operator_helm.job("ring-ha", ref, cuda_libs()))
    operator_helm.wait_phase(real_cluster, kube_ns.ns, "ring-ha", ("Succeeded",), timeout=300)
    pods = json.loads(real_cluster.kubectl("get", "pods", "-n", kube_ns.ns, "-l", "stoker.dev/job-name=ring-ha",
                                           "-o", "json").stdout)["items"]
    logs = "".join(real_cluster.kubectl("logs", "-n", kube_ns.ns, p["metadata"]["name"]).stdout for p in pods)
    assert logs.count("world 2 sum 3.0") == 2, logs
    store = kube_ns.get("service", "stoker-rendezvous")["spec"]["clusterIP"]
    other = f"{kube_ns.ns}-x"
    real_cluster.kubectl("create", "namespace", other)
    try:
        volume, mount = cuda_libs()
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": other},
                 "spec": {"restartPolicy": "Never", "nodeName": NODES[1], "volumes": [volume],
                          "containers": [{"name": "main", "image": ref, "imagePullPolicy": "Never",
                                          "volumeMounts": [mount],
                                          "command": ["python", "-c", PROBE, store, "29400",
                                                      f"{kube_ns.ns}/ring-ha"]}]}}
        real_cluster.kubectl("apply", "-f", "-", input=json.dumps(probe))
        deadline = time.monotonic() + 180
        while real_cluster.kubectl("get", "pod", "probe", "-n", other, "-o", "jsonpath={.status.phase}",
                                   check=False).stdout not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, "the probe pod did not finish"
            time.sleep(1)
        out = real_cluster.kubectl("logs", "probe", "-n", other).stdout
        assert f"preamble: ERR invalid token for job {kube_ns.ns}/ring-ha" in out, out
        assert "raw: refused" in out, out
    finally:
        real_cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_a_stopped_node_goes_unknown_and_its_pods_are_replaced_on_the_other_node(real_cluster, kube_ns):
    """Stopping a node (kubelet, kube-proxy, containerd and every container gone) is a lost
    machine: the control plane marks it Unknown, and a Deployment's pod that does not wait
    for the default 300 s eviction comes back on the other real node."""
    from stoker.devcluster.realnodes import cleanup
    lost = real_cluster.real_nodes().node(1)
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "svc"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "svc"}},
                       "template": {"metadata": {"labels": {"app": "svc"}}, "spec": {
                           "nodeSelector": {"stoker.dev/real-node": "true"},
                           "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                               {"weight": 100, "preference": {"matchExpressions": [
                                   {"key": "kubernetes.io/hostname", "operator": "In", "values": [lost.name]}]}}]}},
                           "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                            "effect": "NoExecute", "tolerationSeconds": 0},
                                           {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                            "effect": "NoExecute", "tolerationSeconds": 0}],
                           "terminationGracePeriodSeconds": 1,
                           "containers": [{"name": "main", "image": busybox(), "imagePullPolicy": "Never",
                                           "command": ["/bin/busybox", "sleep", "3600"]}]}}}}
    kube_ns.apply(deploy)

    def pods():
        import json
        return json.loads(real_cluster.kubectl("get", "pods", "-n", kube_ns.ns, "-l", "app=svc",
                                               "-o", "json").stdout)["items"]

    deadline = time.monotonic() + 120
    while not any(p["spec"].get("nodeName") == lost.name and p["status"].get("phase") == "Running"
                  for p in pods()):
        assert time.monotonic() < deadline, pods()
        time.sleep(0.5)
    assert cleanup.cgroup_pids(lost.cgroup_root), "the node's containers run in its cgroups"

    real_cluster.real_nodes().stop_node(lost)
    assert not cleanup.cgroup_pids(lost.cgroup_root) and not cleanup.cgroup_dirs(lost.cgroup_root)
    assert not hoststate.links() & {lost.host_veth}

    kube_ns.wait("node", lost.name, lambda n: any(
        c["type"] == "Ready" and c["status"] == "Unknown" for c in n["status"]["conditions"]),
        "Ready=Unknown", timeout=60)
    deadline = time.monotonic() + 120
    while not any(p["spec"].get("nodeName") == NODES[0] and p["status"].get("phase") == "Running"
                  and not p["metadata"].get("deletionTimestamp") for p in pods()):
        assert time.monotonic() < deadline, [(p["spec"].get("nodeName"), p["status"].get("phase")) for p in pods()]
        time.sleep(0.5)


def test_down_leaves_the_host_as_it_was(real_cluster, host_before):
    """Last in this module: `down`, then the host's kernel settings, namespaces, links,
    routes, iptables rules, mounts and cgroups are those from before `up`."""
    nodes = real_cluster.real_nodes().known()
    assert len(nodes) == 2
    t0 = time.monotonic()
    real_cluster.down()
    print(f"down in {time.monotonic() - t0:.1f}s")
    assert hoststate.differences(host_before, hoststate.snapshot()) == {}
    assert real_cluster.leftover_pids() == []
    for node in nodes:
        assert not node.run_dir.exists()
