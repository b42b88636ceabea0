"""The API server accepts every example and rejects malformed TrainingJobs with
a message that names the field."""
from __future__ import annotations

import copy
import json
import pathlib

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml")
                  if any(d.get("kind") == "TrainingJob" for d in yaml.safe_load_all(p.read_text()) if d))

BASE = {
    "apiVersion": "stoker.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "bad"},
    "spec": {
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "template": {"spec": {"containers": [{"name": "trainer", "image": "python:3.11",
                                                "command": ["python", "train.py"]}]}},
        "checkpoint": {"uri": "s3://bucket/run", "intervalSteps": 10},
    },
}


def _set(path: str, value):
    def mutate(body):
        keys = path.split(".")
        node = body
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


_DELETE = object()

# (id, mutation, text the error must contain)
MALFORMED = [
    ("replicas-not-int", _set("spec.replicas", "two"), "spec.replicas"),
    ("replicas-zero", _set("spec.replicas", 0), "spec.replicas"),
    ("min-greater-than-max", lambda b: b["spec"].update(minReplicas=3, maxReplicas=2, replicas=2), "spec.minReplicas"),
    ("replicas-above-max", _set("spec.replicas", 5), "spec.replicas must be <= spec.maxReplicas"),
    ("replicas-below-min", lambda b: b["spec"].update(minReplicas=3), "spec.minReplicas must be <= spec.replicas"),
    ("missing-command", _set("spec.template.spec.containers.0.command", _DELETE), "containers[0].command"),
    ("empty-command", _set("spec.template.spec.containers.0.command", []), "containers[0].command"),
    ("missing-image", _set("spec.template.spec.containers.0.image", _DELETE), "spec.template.spec.containers[0].image"),
    ("no-containers", _set("spec.template.spec.containers", []), "spec.template.spec.containers"),
    ("missing-template", _set("spec.template", _DELETE), "spec.template"),
    ("restart-policy", _set("spec.template.spec.restartPolicy", "OnFailure"), "restartPolicy"),
    ("uri-not-s3", _set("spec.checkpoint.uri", "http://bucket/run"), "spec.checkpoint.uri"),
    ("uri-uppercase-bucket", _set("spec.checkpoint.uri", "s3://My_Bucket/run"), "spec.checkpoint.uri"),
    ("checkpoint-no-interval", _set("spec.checkpoint.intervalSteps", _DELETE), "intervalSteps"),
    ("checkpoint-interval-zero", _set("spec.checkpoint.intervalSteps", 0), "spec.checkpoint.intervalSteps"),
    ("negative-backoff", _set("spec.failurePolicy.backoffSeconds", -1), "spec.failurePolicy.backoffSeconds"),
    ("zero-heartbeat-timeout", _set("spec.failurePolicy.heartbeatTimeoutSeconds", 0),
     "spec.failurePolicy.heartbeatTimeoutSeconds"),
    ("negative-progress-timeout", _set("spec.failurePolicy.progressTimeoutSeconds", -30),
     "spec.failurePolicy.progressTimeoutSeconds"),
    ("negative-deadline", _set("spec.runPolicy.activeDeadlineSeconds", -5), "spec.runPolicy.activeDeadlineSeconds"),
    ("negative-ttl", _set("spec.runPolicy.ttlSecondsAfterFinished", -1), "spec.runPolicy.ttlSecondsAfterFinished"),
    ("bad-clean-pod-policy", _set("spec.runPolicy.cleanPodPolicy", "Sometimes"), "spec.runPolicy.cleanPodPolicy"),
    ("suspend-not-bool", _set("spec.runPolicy.suspend", "yes"), "spec.runPolicy.suspend"),
    ("bad-health-action", _set("spec.health.onNonFinite", "Panic"), "spec.health.onNonFinite"),
    ("bad-health-skip", _set("spec.health.skip", "176-184"), "spec.health.skip"),
    ("health-stall-fraction-one", _set("spec.health.throughputStallFraction", 1), "spec.health.throughputStallFraction"),
    ("bad-exit-code-action", _set("spec.failurePolicy.exitCodeRules", [{"exitCodes": [1], "action": "Retry"}]),
     "spec.failurePolicy.exitCodeRules[0].action"),
    ("exit-code-zero", _set("spec.failurePolicy.exitCodeRules", [{"exitCodes": [0], "action": "FailJob"}]),
     "spec.failurePolicy.exitCodeRules[0].exitCodes[0]"),
    # minAvailable was removed (no scheduler read it; gang admission is Kueue's, docs/kueue.md): refused, not ignored.
    ("min-available-is-gone", _set("spec.scheduling.minAvailable", 2), 'unknown field "spec.scheduling.minAvailable"'),
    ("nproc-zero", _set("spec.nprocPerNode", 0), "spec.nprocPerNode"),
    ("spares-on-an-elastic-job", _set("spec.spares", 1), "spec.spares needs a fixed-size job"),
    ("spares-without-in-place-restarts",
     lambda b: [b["spec"].pop(k) for k in ("minReplicas", "maxReplicas")] and b["spec"].update(
         spares=1, failurePolicy={"inPlaceRestarts": 0}), "spec.spares needs in-place restarts"),
    ("negative-spares", _set("spec.spares", -1), "spec.spares"),
    ("unknown-spec-field", _set("spec.replica", 2), 'unknown field "spec.replica"'),
    ("unknown-nested-field", _set("spec.checkpoint.bucket", "x"), 'unknown field "spec.checkpoint.bucket"'),
    ("unknown-top-level-field", _set("specs", {}), 'unknown field "specs"'),
]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted(cluster, crd, namespace, path):
    r = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert r.returncode == 0, r.stderr


def refused_at_apply(cluster, namespace: str, body: dict) -> str:
    """`kubectl apply` of ``body`` fails and nothing is stored; returns the error text."""
    r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
    assert r.returncode != 0, f"accepted: {json.dumps(body)}"
    assert cluster.kubectl("get", "tj", body["metadata"]["name"], "-n", namespace, check=False).returncode != 0
    return r.stderr


@pytest.mark.parametrize("mutate, expect", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_job_is_rejected_naming_the_field(cluster, crd, namespace, mutate, expect):
    body = copy.deepcopy(BASE)
    mutate(body)
    err = refused_at_apply(cluster, namespace, body)
    assert expect in err, err


def test_a_fixed_size_job_cannot_be_scaled(cluster, crd, namespace):
    body = copy.deepcopy(BASE)
    for k in ("minReplicas", "maxReplicas"):
        del body["spec"][k]
    body["spec"]["template"]["spec"]["nodeSelector"] = {"nowhere": "true"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    r = cluster.kubectl("scale", "-n", namespace, "tj/bad", "--replicas=3", check=False)
    assert r.returncode != 0 and "spec.maxReplicas" in r.stderr, r.stderr


def test_a_jobs_spares_cannot_change(cluster, crd, namespace):
    body = copy.deepcopy(BASE)
    for k in ("minReplicas", "maxReplicas"):
        del body["spec"][k]
    body["spec"]["spares"] = 1
    body["spec"]["template"]["spec"]["nodeSelector"] = {"nowhere": "true"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    for spares in (2, 0):
        body["spec"]["spares"] = spares
        r = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)
        assert r.returncode != 0 and "spec.spares cannot change" in r.stderr, r.stderr


def test_elastic_job_scales_through_the_scale_subresource(cluster, crd, namespace):
    body = copy.deepcopy(BASE)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    cluster.kubectl("scale", "-n", namespace, "tj/bad", "--replicas=3")
    assert cluster.kubectl("get", "-n", namespace, "tj/bad", "-o", "jsonpath={.spec.replicas}").stdout == "3"
    r = cluster.kubectl("scale", "-n", namespace, "tj/bad", "--replicas=9", check=False)
    assert r.returncode != 0 and "spec.maxReplicas" in r.stderr, r.stderr
