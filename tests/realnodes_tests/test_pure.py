"""Pure parts of the real-node test bed: addresses, routes, the components' configuration,
the device plugin's allocation. Fast; no root, no cluster."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from stoker.devcluster.realnodes import configs, mountns, network
from stoker.devcluster.realnodes.deviceplugin import api_pb2 as api
from stoker.devcluster.realnodes.deviceplugin.plugin import allocate_response, device_ids
from stoker.devcluster.realnodes.layout import (
    KUBELET_KERNEL_TUNABLES, SERVICE_CIDR, Net, Node, cluster_id,
)

NET = Net("abc123", "100.64.3.0/24")


def nodes(n=2):
    return [Node(Path("/tmp/state"), NET, i) for i in range(n)]


def test_pick_subnet_skips_every_overlap_with_the_hosts_networks():
    used = [ipaddress.ip_network("100.64.0.0/24"), ipaddress.ip_network("100.64.1.128/25"),
            ipaddress.ip_network("192.0.2.0/24")]
    assert network.pick_subnet(used) == "100.64.2.0/24"


def test_pick_subnet_fails_clearly_when_the_pool_is_used_up():
    import pytest
    with pytest.raises(network.NetError, match="no free /24"):
        network.pick_subnet([ipaddress.ip_network("100.64.0.0/16")])


def test_names_fit_the_kernels_limits_and_differ_per_cluster():
    a, b = nodes()
    assert len(NET.bridge) <= 15 and len(a.host_veth) <= 15
    assert a.host_veth != b.host_veth and a.netns != b.netns and a.cgroup_root != b.cgroup_root
    assert cluster_id(Path("/x/one")) != cluster_id(Path("/x/two"))
    # unix sockets: at most 107 bytes
    assert len(str(a.device_plugin_dir / "kubelet.sock")) < 100
    assert len(str(a.containerd_sock) + ".ttrpc") < 100


def test_node_addresses_are_inside_the_bridge_subnet_and_pod_subnets_are_disjoint():
    a, b = nodes()
    sub = ipaddress.ip_network(NET.subnet)
    assert ipaddress.ip_address(a.ip) in sub and ipaddress.ip_address(NET.gateway) in sub
    assert len({a.ip, b.ip, NET.gateway}) == 3
    assert not ipaddress.ip_network(a.pod_cidr).overlaps(ipaddress.ip_network(b.pod_cidr))


def test_each_node_routes_the_other_pod_subnets_and_the_service_cidr_in_its_namespace():
    a, b, c = nodes(3)
    routes = network.node_routes(a, [a, b, c])
    assert [b.pod_cidr, "via", b.ip] in routes and [c.pod_cidr, "via", c.ip] in routes
    assert [SERVICE_CIDR, "via", NET.gateway] in routes
    assert not any(r[0] == a.pod_cidr for r in routes)


def test_the_kubelet_never_writes_host_kernel_settings():
    cfg = configs.kubelet_config(nodes()[0], Path("/pki"))
    # protectKernelDefaults: the kubelet fails rather than writing /proc/sys ...
    assert cfg["protectKernelDefaults"] is True and cfg["makeIPTablesUtilChains"] is False
    # ... and in the node's mount namespace it reads exactly the values it checks.
    binds = dict((dst, src) for src, dst in mountns.bind_commands(nodes()[0]))
    for name in KUBELET_KERNEL_TUNABLES:
        assert f"/proc/sys/{name}" in binds
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["cgroupRoot"] == nodes()[0].cgroup_root


def test_kube_proxy_leaves_host_wide_conntrack_settings_alone():
    cfg = configs.kube_proxy_config(nodes()[0], Path("/k"))
    assert cfg["mode"] == "iptables"
    assert cfg["conntrack"]["maxPerCore"] == 0 and cfg["conntrack"]["min"] == 0


def test_containerd_clamps_oom_score_adj_and_keeps_pod_netns_in_its_state_dir():
    toml = configs.containerd_toml(nodes()[0], "stoker.local/pause:x")
    assert "restrict_oom_score_adj = true" in toml
    assert "netns_mounts_under_state_dir = true" in toml
    assert 'sandbox_image = "stoker.local/pause:x"' in toml


def test_allocate_gives_each_container_its_devices_in_nvidia_visible_devices():
    ids = device_ids("n0", 4)
    req = api.AllocateRequest(container_requests=[
        api.ContainerAllocateRequest(devices_ids=ids[:1]),
        api.ContainerAllocateRequest(devices_ids=ids[2:]),
    ])
    resp = allocate_response(req)
    assert [dict(r.envs) for r in resp.container_responses] == [
        {"NVIDIA_VISIBLE_DEVICES": "n0-gpu-0"}, {"NVIDIA_VISIBLE_DEVICES": "n0-gpu-2,n0-gpu-3"}]


def test_a_gpu_node_s_kubelet_gets_the_gpu_labels_of_the_other_node_kinds():
    # Caught by `make test-realnodes` only: an import left behind by a refactor broke every
    # real-node test at setup; this runs in `make test`.
    from types import SimpleNamespace

    from stoker.devcluster.clusterdefs import DEFAULT_GPU_PRODUCT, GPU_COUNT_LABEL, GPU_PRODUCT_LABEL
    from stoker.devcluster.realnodes.node import RealNodes

    rn = RealNodes(SimpleNamespace(state_dir=Path("/tmp/state"), config={}))
    argv = rn._kubelet_argv(nodes(1)[0], "/bin/kubelet", gpus=2)
    labels = dict(kv.split("=") for kv in argv[argv.index("--node-labels") + 1].split(","))
    assert labels[GPU_PRODUCT_LABEL] == DEFAULT_GPU_PRODUCT and labels[GPU_COUNT_LABEL] == "2"


def test_the_users_own_image_holds_torch_and_what_it_requires_but_nothing_of_stoker():
    """pyimages.torch_image (bring your own image): torch's requirement closure only."""
    from stoker.devcluster.realnodes import pyimages
    tops = pyimages.torch_closure()
    assert {"torch", "sympy", "filelock", "typing_extensions.py"} <= tops
    assert not [t for t in tops if t.lower().startswith(("nvidia", "triton", "grpc", "boto", "stoker", "kopf"))]


def test_a_dockerfile_image_is_rebuilt_when_its_dockerfile_or_a_copied_source_changes(tmp_path, monkeypatch):
    """dockerbuild.content_key: the Dockerfile, every file the Dockerfiles COPY and the base
    are in the key; bytecode caches are not."""
    from stoker.devcluster.realnodes import dockerbuild
    repo = tmp_path / "repo"
    for f in ("pyproject.toml", "README.md", "common/stoker/x.py", "operator/stoker/y.py", "worker/stoker/z.py",
              "operator/Dockerfile", "tests/t.py"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text(f)
    monkeypatch.setattr(dockerbuild, "REPO", repo)
    key = lambda base="b1": dockerbuild.content_key(repo / "operator/Dockerfile", base)  # noqa: E731
    first = key()
    (repo / "common/stoker/__pycache__").mkdir()
    (repo / "common/stoker/__pycache__/x.pyc").write_text("bytecode")
    (repo / "tests/t.py").write_text("not copied by the Dockerfiles")
    assert key() == first
    assert key("b2") != first
    for f in ("operator/Dockerfile", "common/stoker/x.py", "worker/stoker/z.py", "pyproject.toml"):
        before = (repo / f).read_text()
        (repo / f).write_text(before + " changed")
        assert key() != first, f
        (repo / f).write_text(before)
    assert key() == first


def test_real_chaos_puts_each_jobs_operator_kill_after_its_other_faults_in_their_seeded_order():
    from bench.chaos_real import operator_kill_last
    plans = [["node_lost", "operator_killed", "sigkill_trainer", "network_cut"], ["operator_killed"], ["network_cut"]]
    assert operator_kill_last(plans) == [["node_lost", "sigkill_trainer", "network_cut", "operator_killed"],
                                         ["operator_killed"], ["network_cut"]]
