"""spec.template carries the real PodTemplateSpec schema of the pinned Kubernetes release.

- The committed CRD is what crds/generate.py makes from the OpenAPI that this test
  session's kube-apiserver (built from the pinned module) serves: the CI check that
  nobody hand-edits the generated part or forgets `make crd` after a version bump.
- A client-side `kubectl apply` of the CRD works (its last-applied annotation stays far
  under the 256 KiB limit on annotations).
- Malformed pod templates are refused at `kubectl apply`, each with the path of the field.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import pathlib

import pytest
import yaml

from .test_crd_validation import BASE, refused_at_apply

pytestmark = pytest.mark.cluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"
ANNOTATIONS_LIMIT = 256 * 1024  # TotalAnnotationSizeLimitB in apimachinery's ObjectMeta validation

P = "spec.template.spec"
C = f"{P}.containers[0]"


def _generator():
    spec = importlib.util.spec_from_file_location("crd_generate", ROOT / "crds" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trainer(**fields):
    return lambda b: b["spec"]["template"]["spec"]["containers"][0].update(fields)


def _pod(**fields):
    return lambda b: b["spec"]["template"]["spec"].update(fields)


def _tmpl(**fields):
    return lambda b: b["spec"]["template"].update(fields)


def _vol(v):
    return _pod(volumes=[{"name": "v", **v}])


# (id, mutation, the field path the error must name)
MALFORMED_TEMPLATE = [
    # unknown fields (kubectl's strict field validation names them)
    ("typo-resources", _trainer(resoures={"limits": {"cpu": "1"}}), f'unknown field "{C}.resoures"'),
    ("unknown-pod-field", _pod(nodeSelectr={"a": "b"}), f'unknown field "{P}.nodeSelectr"'),
    ("unknown-env-field", _trainer(env=[{"name": "A", "vaule": "1"}]), f'unknown field "{C}.env[0].vaule"'),
    ("unknown-probe-field", _trainer(livenessProbe={"exec": {"command": ["true"]}, "periodSecond": 5}),
     f'unknown field "{C}.livenessProbe.periodSecond"'),
    ("unknown-volume-source", _vol({"emptyDirr": {}}), f'unknown field "{P}.volumes[0].emptyDirr"'),
    ("unknown-template-field", _tmpl(specs={}), 'unknown field "spec.template.specs"'),
    # quantities
    ("gpu-limit-two", _trainer(resources={"limits": {"nvidia.com/gpu": "two"}}),
     f"{C}.resources.limits.nvidia.com/gpu: Invalid value: \"two\""),
    ("memory-request-unit", _trainer(resources={"requests": {"memory": "4 GB"}}), f"{C}.resources.requests.memory"),
    ("cpu-limit-word", _trainer(resources={"limits": {"cpu": "lots"}}), f"{C}.resources.limits.cpu"),
    ("emptydir-size", _vol({"emptyDir": {"sizeLimit": "big"}}), f"{P}.volumes[0].emptyDir.sizeLimit"),
    ("overhead-quantity", _pod(overhead={"cpu": "1 core"}), f"{P}.overhead.cpu"),
    ("resources-not-a-map", _trainer(resources={"limits": ["cpu"]}), f"{C}.resources.limits"),
    # env
    ("env-without-name", _trainer(env=[{"value": "1"}]), f"{C}.env[0].name"),
    ("env-value-number", _trainer(env=[{"name": "A", "value": 1}]), f"{C}.env[0].value"),
    ("env-secret-ref-not-object", _trainer(env=[{"name": "A", "valueFrom": {"secretKeyRef": "s3"}}]),
     f"{C}.env[0].valueFrom.secretKeyRef"),
    ("env-secret-ref-without-key", _trainer(env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
     f"{C}.env[0].valueFrom.secretKeyRef.key"),
    ("env-not-a-list", _trainer(env={"A": "1"}), f"{C}.env"),
    ("envfrom-unknown", _trainer(envFrom=[{"secret": {"name": "s"}}]), f'unknown field "{C}.envFrom[0].secret"'),
    # volumes and mounts
    ("volume-without-name", _pod(volumes=[{"emptyDir": {}}]), f"{P}.volumes[0].name"),
    ("mount-without-path", _trainer(volumeMounts=[{"name": "v"}]), f"{C}.volumeMounts[0].mountPath"),
    ("mount-readonly-string", _trainer(volumeMounts=[{"name": "v", "mountPath": "/v", "readOnly": "yes"}]),
     f"{C}.volumeMounts[0].readOnly"),
    ("hostpath-type", _vol({"hostPath": {"path": "/x", "type": "Folder"}}), f"{P}.volumes[0].hostPath.type"),
    ("secret-volume-mode-string", _vol({"secret": {"secretName": "s", "defaultMode": "0644"}}),
     f"{P}.volumes[0].secret.defaultMode"),
    # probes and lifecycle
    ("probe-port-object", _trainer(readinessProbe={"httpGet": {"port": {"n": 1}}}),
     f"{C}.readinessProbe.httpGet.port"),
    ("probe-without-port", _trainer(readinessProbe={"tcpSocket": {}}), f"{C}.readinessProbe.tcpSocket.port"),
    ("probe-scheme", _trainer(livenessProbe={"httpGet": {"port": 80, "scheme": "FTP"}}),
     f"{C}.livenessProbe.httpGet.scheme"),
    ("probe-period-string", _trainer(livenessProbe={"exec": {"command": ["true"]}, "periodSeconds": "5s"}),
     f"{C}.livenessProbe.periodSeconds"),
    ("prestop-exec-command-string", _trainer(lifecycle={"preStop": {"exec": {"command": "sleep 5"}}}),
     f"{C}.lifecycle.preStop.exec.command"),
    # containers, ports, scheduling, security
    ("pull-policy", _trainer(imagePullPolicy="Sometimes"), f"{C}.imagePullPolicy"),
    ("port-without-number", _trainer(ports=[{"name": "http"}]), f"{C}.ports[0].containerPort"),
    ("port-protocol", _trainer(ports=[{"containerPort": 80, "protocol": "HTTP"}]), f"{C}.ports[0].protocol"),
    ("duplicate-port", _trainer(ports=[{"containerPort": 80}, {"containerPort": 80}]), f"{C}.ports[1]"),
    ("run-as-user-string", _trainer(securityContext={"runAsUser": "root"}), f"{C}.securityContext.runAsUser"),
    ("capabilities-not-list", _trainer(securityContext={"capabilities": {"add": "NET_ADMIN"}}),
     f"{C}.securityContext.capabilities.add"),
    ("toleration-operator", _pod(tolerations=[{"key": "gpu", "operator": "Matches"}]), f"{P}.tolerations[0].operator"),
    ("toleration-effect", _pod(tolerations=[{"key": "gpu", "effect": "NoRun"}]), f"{P}.tolerations[0].effect"),
    ("node-selector-not-strings", _pod(nodeSelector={"gpu": True}), f"{P}.nodeSelector.gpu"),
    ("affinity-operator", _pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Is"}]}]}}}),
     f"{P}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
     ".matchExpressions[0].operator"),
    ("spread-without-topology-key", _pod(topologySpreadConstraints=[{"maxSkew": 1,
                                                                       "whenUnsatisfiable": "DoNotSchedule"}]),
     f"{P}.topologySpreadConstraints[0].topologyKey"),
    ("dns-policy", _pod(dnsPolicy="Google"), f"{P}.dnsPolicy"),
    ("grace-period-string", _pod(terminationGracePeriodSeconds="30s"), f"{P}.terminationGracePeriodSeconds"),
    ("host-network-string", _pod(hostNetwork="true"), f"{P}.hostNetwork"),
    ("init-container-without-name", _pod(initContainers=[{"image": "busybox"}]), f"{P}.initContainers[0].name"),
    ("pull-secret-not-object", _pod(imagePullSecrets=["regcred"]), f"{P}.imagePullSecrets[0]"),
    ("labels-not-strings", _tmpl(metadata={"labels": {"team": 7}}), "spec.template.metadata.labels.team"),
    # Stoker's own rules on the template (CEL) still hold
    ("restart-policy-onfailure", _pod(restartPolicy="OnFailure"), f"{P}.restartPolicy"),
    ("trainer-without-command", lambda b: b["spec"]["template"]["spec"]["containers"][0].pop("command"),
     f"{P}.containers"),
]


def test_committed_crd_is_the_generators_output_for_the_pinned_apiserver(cluster):
    gen = _generator()
    doc = cluster.api("GET", "/openapi/v3/api/v1")[1]
    committed = CRD.read_text()
    assert gen.render(committed, doc) == committed, "crds/trainingjobs.stoker.dev.yaml is stale: run `make crd`"
    tmpl = yaml.safe_load(committed)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["template"]
    pod = tmpl["properties"]["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in pod and len(pod["properties"]) > 30
    assert pod["x-kubernetes-validations"] and pod["properties"]["containers"]["maxItems"] == 16


def test_the_crd_goes_in_with_a_client_side_kubectl_apply(cluster, crd):
    size = len(json.dumps(yaml.safe_load(CRD.read_text()), separators=(",", ":")))
    assert size < ANNOTATIONS_LIMIT / 2, f"the CRD is {size} bytes: a client-side apply's annotation nears 256 KiB"
    r = cluster.kubectl("apply", "--dry-run=server", "-f", str(CRD), check=False)
    assert r.returncode == 0, r.stderr


def test_a_good_template_with_many_pod_fields_is_accepted(cluster, crd, namespace):
    body = copy.deepcopy(BASE)
    body["spec"]["template"]["spec"].update({
        "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    })
    body["spec"]["template"]["spec"]["containers"][0].update({
        "resources": {"limits": {"nvidia.com/gpu": 8, "memory": "64Gi", "cpu": "500m"}},
        "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"containerPort": 8080}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
    })
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(cluster.kubectl("get", "tj", "bad", "-n", namespace, "-o", "json").stdout)
    c = got["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8 and c["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["port"] == "http"


def test_at_least_thirty_malformed_templates():
    assert len(MALFORMED_TEMPLATE) >= 30 and len({m[0] for m in MALFORMED_TEMPLATE}) == len(MALFORMED_TEMPLATE)


@pytest.mark.parametrize("mutate, path", [m[1:] for m in MALFORMED_TEMPLATE], ids=[m[0] for m in MALFORMED_TEMPLATE])
def test_malformed_template_is_refused_at_apply_naming_the_field(cluster, crd, namespace, mutate, path):
    body = copy.deepcopy(BASE)
    mutate(body)
    err = refused_at_apply(cluster, namespace, body)
    assert path in err, err
