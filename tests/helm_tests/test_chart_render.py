"""What `helm template` renders for the documented values combinations: the operator's
security posture, RBAC per watch mode (only the verbs the operator uses, no wildcards),
peering for more than one replica, and the optional monitoring objects."""
from __future__ import annotations

import base64
import json
import re

import pytest

from .conftest import CHART, ROOT as REPO, run_helm

COMBINATIONS = {
    "default": {},
    "namespaced-two-namespaces": {"watch": {"mode": "namespaced", "namespaces": ["team-a", "team-b"]}},
    "cluster": {"watch": {"mode": "cluster"}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "prometheus-rule": {"metrics": {"prometheusRule": {"enabled": True}}},
    "dashboard": {"metrics": {"dashboard": {"enabled": True}}},
    "store-inside": {"rendezvousStore": {"separate": False}},
    "two-replicas": {"replicaCount": 2},
    "two-replicas-cluster": {"replicaCount": 2, "watch": {"mode": "cluster"}},
    "minimal-rbac": {"rbac": {"readNodes": False, "heartbeatTokens": False, "kopfClusterScan": False,
                              "userRoles": False}},
    "pdb-netpol": {"podDisruptionBudget": {"enabled": True}, "networkPolicy": {"enabled": True}},
    "cordon-nodes": {"operator": {"cordonAfter": 3}},
    "kueue": {"kueue": {"enabled": True}},
}


def user_role(o: dict) -> bool:
    """The users' aggregated ClusterRoles (rbac.userRoles): bound to no one by the chart."""
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in o["metadata"].get("labels", {}))


def rbac_rules(objs) -> list[dict]:
    """Rules of the operator's own Roles/ClusterRoles."""
    return [r for o in objs if o["kind"] in ("Role", "ClusterRole") and not user_role(o) for r in o["rules"]]


def grants(objs) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples of every Role/ClusterRole rule."""
    return {(g, res, v) for r in rbac_rules(objs) for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


def operator_container(objs) -> dict:
    dep = objs.one("Deployment", "stoker")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_helm_lint_is_clean_in_strict_mode_for_every_combination(helm, tmp_path):
    for name, values in COMBINATIONS.items():
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(values))
        r = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(f), check=False)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        assert "[WARNING]" not in r.stdout and "[ERROR]" not in r.stdout, f"{name}: {r.stdout}"


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_every_combination_renders_a_hardened_operator_and_no_wildcard_rbac(render, name):
    objs = render(COMBINATIONS[name])
    dep = objs.one("Deployment", "stoker")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "stoker"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    op = operator_container(objs)
    assert op["command"] == ["python", "-m", "stoker.operator.main"]
    assert op["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert op["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in op["ports"]}
    assert env(op)["STOKER_OPERATOR_HEALTH_PORT"] == str(ports["health"])
    assert env(op)["STOKER_OPERATOR_METRICS_PORT"] == str(ports["metrics"])
    for rule in rbac_rules(objs):
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    assert not {res for _, res, _ in grants(objs)} & {"roles", "clusterroles", "rolebindings",
                                                     "clusterrolebindings", "serviceaccounts"}
    # Secrets: only get-by-name and create (the per-job heartbeat token), never list/watch/change.
    assert {v for _, res, v in grants(objs) if res == "secrets"} <= {"get", "create"}
    assert {v for _, res, v in grants(objs) if res == "nodes"} <= {"get", "list", "watch", "patch"}
    crd = objs.one("CustomResourceDefinition", "trainingjobs.stoker.dev")
    assert crd["spec"]["names"]["shortNames"] == ["tj"]


def test_operator_grants_are_exactly_what_its_code_calls(render):
    objs = render({})
    assert grants(objs) == {
        ("stoker.dev", "trainingjobs", v) for v in ("get", "list", "watch", "patch", "delete")
    } | {
        ("stoker.dev", "trainingjobs/status", "patch"),
    } | {
        ("", "pods", v) for v in ("list", "watch", "create", "delete")
    } | {
        ("events.k8s.io", "events", "create"),
    } | {
        ("", "secrets", v) for v in ("get", "create")  # heartbeat tokens (rbac.heartbeatTokens); get: preflight
    } | {
        ("", "configmaps", "get"),  # preflight: ConfigMaps the pods reference exist (preflight_shell.py)
    } | {
        ("", "nodes", v) for v in ("get", "list", "watch")  # node-loss detection (rbac.readNodes)
    } | {
        (g, res, v) for g, res in (("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions"))
        for v in ("list", "watch")  # kopf's cluster observation (rbac.kopfClusterScan)
    }


def test_namespaced_mode_binds_a_role_in_each_served_namespace(render):
    objs = render(COMBINATIONS["namespaced-two-namespaces"], namespace="stoker-system")
    # Cluster-scoped: only read-only grants (kopf's observation, nodes), named per namespace
    # (plus the users' aggregated roles, which the chart binds to no one).
    operator_roles = [o for o in objs.of("ClusterRole") if not user_role(o)]
    assert sorted(o["metadata"]["name"] for o in operator_roles) == [
        "stoker-stoker-system-kopf-scan", "stoker-stoker-system-nodes"]
    assert {v for o in operator_roles for r in o["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert sorted(b["roleRef"]["name"] for b in objs.of("ClusterRoleBinding")) == [
        "stoker-stoker-system-kopf-scan", "stoker-stoker-system-nodes"]
    assert sorted(o["metadata"]["namespace"] for o in objs.of("Role")) == ["team-a", "team-b"]
    for rb in objs.of("RoleBinding"):
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stoker"}
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "stoker", "namespace": "stoker-system"}]
    assert sorted(o["metadata"]["namespace"] for o in objs.of("RoleBinding")) == ["team-a", "team-b"]
    assert env(operator_container(objs))["STOKER_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_namespaced_mode_with_the_optional_grants_off_grants_nothing_cluster_wide_and_no_secrets(render):
    objs = render(COMBINATIONS["minimal-rbac"])
    assert not objs.of("ClusterRole") and not objs.of("ClusterRoleBinding")
    assert objs.one("Role", "stoker") and objs.one("RoleBinding", "stoker")
    assert "secrets" not in {res for _, res, _ in grants(objs)}


def test_namespaced_mode_defaults_to_the_release_namespace(render):
    objs = render({}, namespace="ml")
    assert [o["metadata"]["namespace"] for o in objs.of("Role")] == ["ml"]
    assert env(operator_container(objs))["STOKER_OPERATOR_NAMESPACES"] == "ml"


def test_cluster_mode_uses_one_cluster_role_and_watches_every_namespace(render):
    objs = render(COMBINATIONS["cluster"])
    assert not objs.of("Role") and not objs.of("RoleBinding")
    binding = objs.one("ClusterRoleBinding", "stoker")
    assert binding["roleRef"]["name"] == "stoker"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "stoker", "namespace": "stoker-system"}]
    assert env(operator_container(objs))["STOKER_OPERATOR_NAMESPACES"] == ""
    g = grants(objs)
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in g
    assert ("", "namespaces", "list") not in g  # cluster-wide kopf lists no namespaces


def test_one_replica_runs_standalone_with_the_locked_store_apart_by_default(render):
    """The store outlives the operator: restarting or upgrading it restarts no running job."""
    objs = render({})
    e = env(operator_container(objs))
    assert "STOKER_OPERATOR_PEERING" not in e
    assert objs.one("Deployment", "stoker")["spec"]["strategy"] == {"type": "Recreate"}
    assert e["STOKER_OPERATOR_RENDEZVOUS_STORE"] == "separate"
    assert e["STOKER_OPERATOR_RENDEZVOUS_ADVERTISE_ADDRESS"] == "$(STOKER_RENDEZVOUS_SERVICE_HOST)"
    store = objs.one("Deployment", "stoker-rendezvous")["spec"]["template"]["spec"]["containers"][0]
    assert store["command"][:3] == ["python", "-m", "stoker.operator.rdzv_gateway"]
    assert objs.one("Secret", "stoker-rendezvous-key")
    assert "rendezvous" not in {p["name"] for p in objs.one("Service", "stoker")["spec"]["ports"]}


def test_one_replica_may_host_the_store_inside_and_recreates_on_update(render):
    objs = render({"rendezvousStore": {"separate": False}})
    assert not objs.of("Secret") and len(objs.of("Deployment")) == 1
    e = env(operator_container(objs))
    assert "STOKER_OPERATOR_PEERING" not in e
    assert objs.one("Deployment", "stoker")["spec"]["strategy"] == {"type": "Recreate"}
    assert e["STOKER_OPERATOR_RENDEZVOUS_PORT"] == "29400"
    # Workers reach the store at the Service's ClusterIP (an IP literal), expanded by the kubelet.
    assert e["STOKER_OPERATOR_RENDEZVOUS_ADVERTISE_ADDRESS"] == "$(STOKER_SERVICE_HOST)"
    assert e["STOKER_OPERATOR_HEARTBEAT_ADDRESS"] == "$(STOKER_SERVICE_HOST):50051"
    svc = objs.one("Service", "stoker")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"metrics": 9090, "grpc-heartbeat": 50051,
                                                                   "rendezvous": 29400}


@pytest.mark.parametrize("mode,kind,resource", [("namespaced", "KopfPeering", "kopfpeerings"),
                                                ("cluster", "ClusterKopfPeering", "clusterkopfpeerings")])
def test_two_replicas_share_a_peering_object_and_a_separate_store(render, mode, kind, resource):
    objs = render({"replicaCount": 2, "watch": {"mode": mode}})
    e = env(operator_container(objs))
    assert e["STOKER_OPERATOR_PEERING"] == "stoker"
    # The peering CRDs come with the chart (crds/kopf-peering.yaml); the operator creates
    # its peering object at start-up, so the chart grants create.
    assert objs.one("CustomResourceDefinition", f"{resource}.kopf.dev")
    assert not objs.of(kind)
    g = grants(objs)
    assert {("kopf.dev", resource, v) for v in ("list", "watch", "create", "patch")} <= g
    patch_rule = next(r for r in rbac_rules(objs) if "patch" in r["verbs"] and r["resources"] == [resource])
    assert patch_rule["resourceNames"] == ["stoker"]  # only our own peering object
    # The store runs once, outside the replicas; the operators host none and advertise it.
    store = objs.one("Deployment", "stoker-rendezvous")
    assert store["spec"]["replicas"] == 1
    assert store["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # ...locked: the gateway checks tokens derived from the install key both Deployments read
    store_c = store["spec"]["template"]["spec"]["containers"][0]
    assert store_c["command"][:3] == ["python", "-m", "stoker.operator.rdzv_gateway"]
    key_ref = {"secretKeyRef": {"name": "stoker-rendezvous-key", "key": "key"}}
    assert {"name": "STOKER_OPERATOR_RENDEZVOUS_KEY", "valueFrom": key_ref} in store_c["env"]
    assert {"name": "STOKER_OPERATOR_RENDEZVOUS_KEY", "valueFrom": key_ref} in operator_container(objs)["env"]
    assert len(base64.b64decode(objs.one("Secret", "stoker-rendezvous-key")["data"]["key"])) >= 32
    assert e["STOKER_OPERATOR_RENDEZVOUS_PORT"] == "29400" and e["STOKER_OPERATOR_RENDEZVOUS_STORE"] == "separate"
    assert e["STOKER_OPERATOR_RENDEZVOUS_ADVERTISE_ADDRESS"] == "$(STOKER_RENDEZVOUS_SERVICE_HOST)"
    assert objs.one("Service", "stoker-rendezvous")
    assert "rendezvous" not in {p["name"] for p in objs.one("Service", "stoker")["spec"]["ports"]}
    assert objs.one("Deployment", "stoker")["spec"]["strategy"]["type"] == "RollingUpdate"
    # Heartbeats reach only the replica that acts: it labels its own pod (active_replica.py).
    assert objs.one("Service", "stoker")["spec"]["selector"]["stoker.dev/operator-active"] == "true"
    refs = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            for e in operator_container(objs)["env"]}
    assert refs["STOKER_OPERATOR_POD_NAME"] == "metadata.name"
    assert refs["STOKER_OPERATOR_POD_NAMESPACE"] == "metadata.namespace"
    own = objs.one("Role", "stoker-self")
    assert own["metadata"]["namespace"] == "stoker-system" and own["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    assert objs.one("RoleBinding", "stoker-self")["roleRef"]["name"] == "stoker-self"
    get_rule = next(r for r in rbac_rules(objs) if "get" in r["verbs"] and r["resources"] == [resource])
    assert get_rule["resourceNames"] == ["stoker"]


def test_with_one_replica_the_service_selects_the_operator_whatever_its_labels(render):
    objs = render({})
    assert "stoker.dev/operator-active" not in objs.one("Service", "stoker")["spec"]["selector"]
    assert not [o for o in objs.of("Role") if o["metadata"]["name"].endswith("-self")]


def test_a_pinned_cluster_ip_is_advertised_as_is(render):
    objs = render({"service": {"clusterIP": "10.96.0.77"}, "rendezvousStore": {"clusterIP": "10.96.0.78"}})
    assert objs.one("Service", "stoker")["spec"]["clusterIP"] == "10.96.0.77"
    assert objs.one("Service", "stoker-rendezvous")["spec"]["clusterIP"] == "10.96.0.78"
    e = env(operator_container(objs))
    assert e["STOKER_OPERATOR_HEARTBEAT_ADDRESS"] == "10.96.0.77:50051"
    assert e["STOKER_OPERATOR_RENDEZVOUS_ADVERTISE_ADDRESS"] == "10.96.0.78"
    inside = render({"service": {"clusterIP": "10.96.0.77"}, "rendezvousStore": {"separate": False}})
    assert env(operator_container(inside))["STOKER_OPERATOR_RENDEZVOUS_ADVERTISE_ADDRESS"] == "10.96.0.77"


def test_kueue_grants_only_what_a_queued_job_needs_and_only_when_enabled(render):
    assert not {g for g in grants(render({})) if g[0] == "kueue.x-k8s.io" or g[1] == "priorityclasses"}
    assert env(operator_container(render({})))["STOKER_OPERATOR_KUEUE"] == "off"
    for mode in ("namespaced", "cluster"):
        objs = render({"kueue": {"enabled": True}, "watch": {"mode": mode}})
        assert env(operator_container(objs))["STOKER_OPERATOR_KUEUE"] == "on"
        kueue = {(g, res, v) for g, res, v in grants(objs) if g == "kueue.x-k8s.io" or res == "priorityclasses"}
        assert kueue == {("kueue.x-k8s.io", "workloads", v) for v in ("get", "list", "watch", "create", "patch",
                                                                      "delete")} | {
            ("kueue.x-k8s.io", "workloads/status", "patch"), ("kueue.x-k8s.io", "workloadpriorityclasses", "get"),
            ("scheduling.k8s.io", "priorityclasses", "get")}
        # The cluster-scoped classes are read through a ClusterRole of their own, even in namespaced mode.
        classes = objs.one("ClusterRole", "stoker-stoker-system-kueue")
        assert {r for rule in classes["rules"] for r in rule["resources"]} == {"priorityclasses",
                                                                               "workloadpriorityclasses"}


def test_nodes_are_read_only_unless_the_cordon_policy_is_granted(render):
    nodes = render({}).one("ClusterRole", "stoker-stoker-system-nodes")
    assert nodes["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    objs = render(COMBINATIONS["cordon-nodes"])
    nodes = objs.one("ClusterRole", "stoker-stoker-system-nodes")
    assert nodes["rules"][1] == {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}
    assert objs.one("ClusterRoleBinding", "stoker-stoker-system-nodes")["roleRef"]["name"] == "stoker-stoker-system-nodes"
    assert objs.of("Role")  # the namespaced grants stay namespaced


def test_service_monitor_scrapes_the_metrics_port(render):
    objs = render(COMBINATIONS["service-monitor"])
    sm = objs.one("ServiceMonitor", "stoker")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    svc = objs.one("Service", "stoker")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def exported_names() -> set[str]:
    """Every series name stoker.operator.metrics can export (labelled families included)."""
    from stoker.operator import metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""],
                "summary": ["_count", "_sum", ""]}
    return {m.name + sfx for m in metrics.REGISTRY.collect() for sfx in suffixes.get(m.type, [""])}


def rendered_rules(render, **thresholds) -> dict[str, dict]:
    objs = render({"metrics": {"prometheusRule": {"enabled": True, "thresholds": thresholds}}})
    return {r["alert"]: r for g in objs.one("PrometheusRule", "stoker")["spec"]["groups"] for r in g["rules"]}


def readme_anchors() -> set[str]:
    """GitHub's anchors of the README's headings (lower case, spaces to '-', punctuation dropped)."""
    text = (REPO / "README.md").read_text()
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_prometheus_rule_alerts_use_the_operator_metric_names(render):
    rules = rendered_rules(render, checkpointAgeSeconds=900)
    assert {"StokerJobStuckRestarting", "StokerWorkerHeartbeatLost", "StokerCheckpointTooOld",
            "StokerNodeRepeatedFailures", "StokerOperatorDown", "StokerWorkerHeartbeatLate"} <= set(rules)
    assert "time() - stoker_checkpoint_timestamp_seconds > 900" in rules["StokerCheckpointTooOld"]["expr"]
    assert rules["StokerJobStuckRestarting"]["for"] == "15m"
    assert 'phase="Restarting"' in rules["StokerJobStuckRestarting"]["expr"]
    # Every metric an alert uses is one the operator exports.
    exported = exported_names()
    for alert, rule in rules.items():
        used = set(re.findall(r"\b(stoker_[a-z_]+)", rule["expr"]))
        missing = used - exported
        assert not missing, f"{alert} uses {missing}, not exported by stoker.operator.metrics"
    for r in rules.values():  # Prometheus templates survive Helm's templating untouched
        for text in r.get("annotations", {}).values():
            assert "{{ $" in text or "$value" not in text


def test_per_job_alerts_name_the_job_and_every_alert_links_its_runbook(render):
    rules = rendered_rules(render)
    anchors = readme_anchors()
    for alert, rule in rules.items():
        url = rule["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == "https://github.com/stoker-dev/stoker/blob/main/README.md", url
        assert anchor == alert.lower() and anchor in anchors, f"{alert}: no README heading for #{anchor}"
        # Prometheus owns `job` (the scrape job); only the operator's own `up` may select on it.
        assert not re.search(r"stoker_[a-z_]+\{[^}]*\bjob=", rule["expr"]), alert
    per_job = [a for a, r in rules.items()
               if re.search(r"stoker_(job_phase|trainingjob_|worker_last|checkpoint_timestamp)", r["expr"])]
    assert len(per_job) >= 4, per_job
    for alert in per_job:
        summary = rules[alert]["annotations"]["summary"]
        assert "{{ $labels.namespace }}/{{ $labels.trainingjob }}" in summary, (alert, summary)


def test_dashboard_is_valid_json_over_the_operator_metrics(render):
    objs = render(COMBINATIONS["dashboard"])
    cm = objs.one("ConfigMap", "stoker-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    exported = exported_names()
    for key in ("stoker.json", "stoker-job.json"):
        dash = json.loads(cm["data"][key])
        exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
        assert set(re.findall(r"\b(stoker_[a-z_]+)", exprs)) <= exported, key


def test_the_job_dashboard_selects_one_job_by_namespace_and_name(render):
    cm = render(COMBINATIONS["dashboard"]).one("ConfigMap", "stoker-dashboard")
    dash = json.loads(cm["data"]["stoker-job.json"])
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "trainingjob"} <= set(variables)
    assert "$namespace" in variables["trainingjob"]["query"]["query"]  # names of the chosen namespace only
    for panel in dash["panels"]:
        for t in panel["targets"]:
            for sel in re.findall(r"stoker_[a-z_]+\{([^}]*)\}", t["expr"]):
                assert 'namespace="$namespace"' in sel and 'trainingjob="$trainingjob"' in sel, t["expr"]
            assert re.search(r"stoker_[a-z_]+\{", t["expr"]), t["expr"]


def test_optional_objects_are_off_by_default(render):
    kinds = set(render({}).kinds())
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap", "KopfPeering", "ClusterKopfPeering"}


@pytest.mark.parametrize("name", ["default", "cluster", "two-replicas"])
def test_every_operator_setting_the_chart_passes_is_one_the_operator_reads(render, name):
    from stoker.operator import config

    e = env(operator_container(render(COMBINATIONS[name] | {"operator": {"s3Endpoint": "http://s3:9000"}})))
    downward = "set-by-the-downward-api"   # valueFrom: fieldRef (the pod's own name and namespace)
    settings = {k: (downward if v is None else v).replace("$(STOKER_SERVICE_HOST)", "10.96.0.5").replace(
                "$(STOKER_RENDEZVOUS_SERVICE_HOST)", "10.96.0.6")
                for k, v in e.items() if k.startswith(config.PREFIX)}
    baseline = config.load({})
    for key, value in settings.items():
        if value in ("", None):
            continue
        cfg = config.load({key: value})
        assert cfg != baseline or str(value) in repr(baseline), f"{key}={value!r} is not read by the operator"
    cfg = config.load(settings)
    assert cfg.health_port == 8080 and cfg.metrics_port == 9090
    assert cfg.clusterwide == (name == "cluster")


def test_stoker_doctor_finds_the_charts_operator_pods(render):
    from stoker.cli.doctor import OPERATOR_SELECTOR

    labels = render({}).one("Deployment", "stoker")["spec"]["template"]["metadata"]["labels"]
    wanted = dict(kv.split("=", 1) for kv in OPERATOR_SELECTOR.split(","))
    assert wanted.items() <= labels.items()


def test_user_roles_aggregate_into_edit_and_view_and_grant_only_trainingjobs(render):
    objs = render({})
    edit = objs.one("ClusterRole", "stoker-stoker-system-trainingjobs-edit")
    view = objs.one("ClusterRole", "stoker-stoker-system-trainingjobs-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for role in (edit, view):
        assert {g for r in role["rules"] for g in r["apiGroups"]} == {"stoker.dev"}
    assert not {v for r in view["rules"] for v in r["verbs"]} - {"get", "list", "watch"}
    status = [r for r in edit["rules"] if "trainingjobs/status" in r["resources"]]
    assert status and not {v for r in status for v in r["verbs"]} - {"get", "list", "watch"}
    assert not [o for o in objs if o["kind"].endswith("Binding") and "trainingjobs-" in o["roleRef"]["name"]]
    assert "stoker-stoker-system-trainingjobs-edit" not in {o["metadata"]["name"] for o in render({"rbac": {"userRoles": False}})}


def test_security_contexts_take_any_value_and_a_platform_assigned_uid(render):
    objs = render({"podSecurityContext": {"runAsUser": 123456789, "runAsGroup": 5, "fsGroup": 5}})
    pod = objs.one("Deployment", "stoker")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 123456789 and pod["securityContext"]["fsGroup"] == 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    # OpenShift-style: the platform assigns the UID; the chart sets none.
    objs = render({"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
                   "replicaCount": 2})
    for name in ("stoker", "stoker-rendezvous"):
        pod = objs.one("Deployment", name)["spec"]["template"]["spec"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod["securityContext"]), pod["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert "runAsUser" not in c["securityContext"] and c["securityContext"]["readOnlyRootFilesystem"]


def test_optional_pdb_and_network_policy(render):
    objs = render(COMBINATIONS["pdb-netpol"])
    pdb = objs.one("PodDisruptionBudget", "stoker")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    dep = objs.one("Deployment", "stoker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    np = objs.one("NetworkPolicy", "stoker")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    workers, metrics, health = np["spec"]["ingress"]
    assert workers["from"][0]["podSelector"]["matchExpressions"] == [
        {"key": "stoker.dev/job-name", "operator": "Exists"}]  # the label every worker pod carries
    assert {p["port"] for p in workers["ports"]} == {29400, 50051}
    assert "from" not in metrics and metrics["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert health["ports"] == [{"port": 8080, "protocol": "TCP"}]
    objs = render({"podDisruptionBudget": {"enabled": True, "minAvailable": 1}, "replicaCount": 2})
    assert objs.one("PodDisruptionBudget", "stoker")["spec"] == {
        "minAvailable": 1, "selector": pdb["spec"]["selector"]}
    assert not {"PodDisruptionBudget", "NetworkPolicy"} & set(render({}).kinds())
