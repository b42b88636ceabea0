"""Bad values are refused at install/template time by values.schema.json, and helm's
error names the offending field."""
from __future__ import annotations

import json

import pytest

from .conftest import CHART, KUBE_VERSION, run_helm

BAD = {
    "replicas-negative": ({"replicaCount": -1}, "replicaCount"),
    "replicas-zero": ({"replicaCount": 0}, "replicaCount"),
    "replicas-wrong-type": ({"replicaCount": "two"}, "replicaCount"),
    "unknown-top-level-key": ({"replicas": 2}, "replicas"),
    "unknown-nested-key": ({"watch": {"mode": "cluster", "namespace": ["a"]}}, "namespace"),
    "bad-watch-mode": ({"watch": {"mode": "global"}}, "watch.mode"),
    "bad-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    "bad-log-level": ({"operator": {"logLevel": "TRACE"}}, "operator.logLevel"),
    "bad-launcher": ({"operator": {"launcher": "mpirun"}}, "operator.launcher"),
    "negative-cordon": ({"operator": {"cordonAfter": -1}}, "operator.cordonAfter"),
    "root-user": ({"podSecurityContext": {"runAsUser": 0}}, "podSecurityContext.runAsUser"),
    "root-container": ({"containerSecurityContext": {"runAsUser": 0}}, "containerSecurityContext.runAsUser"),
    "privileged": ({"containerSecurityContext": {"privileged": True}}, "containerSecurityContext.privileged"),
    "port-out-of-range": ({"ports": {"metrics": 70000}}, "ports.metrics"),
    "bad-namespace-name": ({"watch": {"namespaces": ["Team_A"]}}, "watch.namespaces"),
    "bool-as-string": ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "metrics.serviceMonitor.enabled"),
    "bad-cluster-ip": ({"service": {"clusterIP": "not-an-ip"}}, "service.clusterIP"),
    "bad-s3-endpoint": ({"operator": {"s3Endpoint": "minio:9000"}}, "operator.s3Endpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_values_are_refused_naming_the_field(helm, tmp_path, case):
    values, field = BAD[case]
    f = tmp_path / "values.json"
    f.write_text(json.dumps(values))
    r = run_helm(helm, "template", "stoker", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(f), check=False)
    assert r.returncode != 0, f"{case}: accepted {values}"
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    # helm reports JSON pointers like /watch/mode (or the unknown key's name).
    pointer = "/" + field.replace(".", "/")
    assert pointer in r.stderr or f"'{field}'" in r.stderr, f"{case}: field {field} not named in:\n{r.stderr}"


def test_the_documented_defaults_and_combinations_pass_the_schema(helm, tmp_path):
    values = {"replicaCount": 3, "watch": {"mode": "namespaced", "namespaces": ["a", "b"]},
              "service": {"clusterIP": "10.96.0.10"}, "operator": {"s3Endpoint": "http://minio:9000",
                                                                   "resyncSeconds": 2.5},
              "resources": {"requests": {"cpu": 1, "memory": "1Gi"}}}
    f = tmp_path / "values.json"
    f.write_text(json.dumps(values))
    run_helm(helm, "template", "stoker", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(f))
