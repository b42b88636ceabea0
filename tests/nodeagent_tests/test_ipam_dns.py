"""Loopback address allocation and the service-name map."""
import json
import os
import socket
import subprocess
import sys
import textwrap

from stoker.devcluster.nodeagent import dnsmap, ipam

SHIM = os.path.join(os.path.dirname(ipam.__file__), "shim")


def test_node_indices_are_unique_and_stable(tmp_path):
    d = str(tmp_path / "ipam")
    a = ipam.claim_node_index("n1", str(tmp_path / "a"), d)
    b = ipam.claim_node_index("n1", str(tmp_path / "b"), d)  # same name, other agent
    assert a != b
    assert ipam.claim_node_index("n1", str(tmp_path / "a"), d) == a  # restart keeps it


def test_dead_owners_indices_are_reused_only_when_all_are_taken():
    table = {str(i): {"key": f"k{i}", "claimed": i} for i in range(1, 255)}
    assert ipam.choose_index({"1": {"key": "x"}}, "y", alive=lambda e: True) == 2
    assert ipam.choose_index(table, "new", alive=lambda e: e["key"] not in ("k7", "k9")) == 7


def test_pod_ips_skip_addresses_in_use():
    ip, seq = ipam.next_pod_ip(3, 0, {"127.3.0.2"})
    assert (ip, seq) == ("127.3.0.3", 2)
    assert ipam.pod_ip(3, 253) == "127.3.1.2"
    assert ipam.node_ip(3) == "127.3.0.1"


def svc(name, ns="ns", headless=True, selector=None, **spec):
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "None" if headless else "10.0.0.5", "selector": selector, **spec}}


def pod(name, ip, labels, ready=True, ns="ns", phase="Running", **spec):
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec,
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def slice_(svc_name, eps, ns="ns"):
    return {"metadata": {"namespace": ns, "labels": {"kubernetes.io/service-name": svc_name}},
            "addressType": "IPv4", "endpoints": eps}


def test_selector_services_resolve_to_ready_selected_pods():
    slim = dnsmap.slim_pod
    hosts = dnsmap.build_hosts(
        [svc("web", selector={"app": "web"}), svc("api", headless=False, selector={"app": "api"}),
         svc("all", selector={"app": "web"}, publishNotReadyAddresses=True)],
        [slim(p) for p in [
            pod("w0", "127.1.0.2", {"app": "web"}, hostname="w0", subdomain="web"),
            pod("w1", "127.1.0.3", {"app": "web"}, ready=False),
            pod("w2", "127.1.0.4", {"app": "web"}, phase="Succeeded"),
            pod("other-ns", "127.1.0.5", {"app": "web"}, ns="elsewhere"),
            pod("a0", "127.2.0.2", {"app": "api", "x": "y"})]],
        [])
    assert hosts["web.ns.svc.cluster.local"] == ["127.1.0.2"]
    assert hosts["w0.web.ns.svc.cluster.local"] == ["127.1.0.2"]
    assert hosts["api.ns.svc.cluster.local"] == ["127.2.0.2"]  # ClusterIP: the pod IPs (no kube-proxy)
    assert hosts["all.ns.svc.cluster.local"] == ["127.1.0.2", "127.1.0.3"]


def test_selectorless_services_use_endpointslices_and_externalname_is_a_cname():
    hosts = dnsmap.build_hosts(
        [svc("manual"), svc("ext", type="ExternalName", externalName="example.org.")], [],
        [slice_("manual", [{"addresses": ["10.1.0.2"], "conditions": {"ready": True}, "hostname": "m0"},
                           {"addresses": ["10.1.0.3"], "conditions": {"ready": False}}])])
    assert hosts["manual.ns.svc.cluster.local"] == ["10.1.0.2"]
    assert hosts["m0.manual.ns.svc.cluster.local"] == ["10.1.0.2"]
    assert hosts["ext.ns.svc.cluster.local"] == "example.org"


def test_shim_resolves_cluster_names_with_the_pod_search_list(tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"web.ns.svc.cluster.local": ["127.1.0.2"],
                                 "empty.ns.svc.cluster.local": []}))
    code = textwrap.dedent("""
        import socket
        out = []
        for n in ["web", "web.ns", "web.ns.svc", "web.ns.svc.cluster.local", "web.ns.svc.cluster.local.",
                  "mypod", "localhost"]:
            out.append(sorted({a[4][0] for a in socket.getaddrinfo(n, 80, type=socket.SOCK_STREAM)}))
        for n in ["empty", "nope.ns.svc.cluster.local"]:
            try:
                socket.getaddrinfo(n, 80)
                out.append("resolved")
            except socket.gaierror:
                out.append("nxdomain")
        out.append(socket.gethostbyname("web"))
        out.append(socket.gethostname())
        print(out)
    """)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": SHIM, "STOKER_NODEAGENT_HOSTS": str(hosts),
           "STOKER_NODEAGENT_NAMESPACE": "ns", "STOKER_NODEAGENT_HOSTNAME": "mypod",
           "STOKER_NODEAGENT_POD_IP": "127.1.0.9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    w = ["127.1.0.2"]
    assert eval(out) == [w, w, w, w, w, ["127.1.0.9"], sorted({a[4][0] for a in socket.getaddrinfo(
        "localhost", 80, type=socket.SOCK_STREAM)}), "nxdomain", "nxdomain", "127.1.0.2", "mypod"]


def test_hosts_file_for_the_c_shim():
    text = dnsmap.hosts_file_text({"a.ns.svc.cluster.local": ["127.1.0.2", "127.1.0.3"],
                                   "b.ns.svc.cluster.local": [], "c.ns.svc.cluster.local": "example.org"})
    assert text == ("127.1.0.2 a.ns.svc.cluster.local\n127.1.0.3 a.ns.svc.cluster.local\n"
                    "- b.ns.svc.cluster.local\n")


def test_c_shim_resolves_cluster_names_for_libc_callers(tmp_path):
    import shutil

    import pytest

    from stoker.devcluster.nodeagent import preload

    if not (shutil.which("cc") or shutil.which("gcc")) or not shutil.which("getent"):
        pytest.skip("needs a C compiler and getent")
    lib = preload.build(str(tmp_path))
    hosts = tmp_path / "hosts"
    hosts.write_text(dnsmap.hosts_file_text({"web.ns.svc.cluster.local": ["127.1.0.2", "127.1.0.3"],
                                             "empty.ns.svc.cluster.local": []}))
    env = {"PATH": os.environ["PATH"], "LD_PRELOAD": lib, "STOKER_NODEAGENT_HOSTS_FILE": str(hosts),
           "STOKER_NODEAGENT_NAMESPACE": "ns", "STOKER_NODEAGENT_HOSTNAME": "mypod",
           "STOKER_NODEAGENT_POD_IP": "127.1.0.9"}

    def ahosts(name):  # getent ahostsv4 goes through getaddrinfo(3)
        r = subprocess.run(["getent", "ahostsv4", name], env=env, capture_output=True, text=True)
        return sorted({line.split()[0] for line in r.stdout.splitlines()}) if r.returncode == 0 else None

    assert ahosts("web") == ahosts("web.ns.svc") == ahosts("web.ns.svc.cluster.local.") == ["127.1.0.2", "127.1.0.3"]
    assert ahosts("mypod") == ["127.1.0.9"]
    assert ahosts("empty") is None and ahosts("nope.ns.svc.cluster.local") is None
    assert ahosts("localhost") == ["127.0.0.1"]


def test_shim_still_runs_the_sitecustomize_it_shadows(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os; os.environ['CHAINED'] = 'yes'\n")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{SHIM}:{other}",
           "STOKER_NODEAGENT_HOSTS": str(tmp_path / "none.json")}
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('CHAINED'))"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "yes"
