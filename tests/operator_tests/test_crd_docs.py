"""The CRD as a platform engineer reads it: every field we define is described
(`kubectl explain`), conditions have the metav1.Condition shape, `kubectl delete all`
leaves TrainingJobs alone, and the README's `kubectl wait` recipes work on a job that
succeeds and on one that fails."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from stoker.operator.status import with_observed_generation

from .conftest import CRD, create_job, job_manifest, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
# The pod template's schema is Kubernetes' own PodTemplateSpec (generated, described upstream);
# the API server refuses anything but `type` on the top-level metadata (it is ObjectMeta).
NOT_OURS = (".spec.template",)
NOT_ALLOWED = (".metadata",)


def undescribed(node: dict, path: str = "") -> list[str]:
    if path.startswith(NOT_OURS) or path in NOT_ALLOWED:
        return []
    out = [] if node.get("description", "").strip() else [path or "."]
    for key, child in (node.get("properties") or {}).items():
        out += undescribed(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += undescribed(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += undescribed(node["additionalProperties"], f"{path}{{}}")
    return out


def test_every_field_outside_the_pod_template_has_a_description():
    missing = undescribed(SCHEMA)
    assert not missing, f"{len(missing)} schema nodes without a description: {missing}"


def test_conditions_have_the_metav1_condition_shape():
    item = SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["observedGeneration"]["format"] == "int64"
    stamped = with_observed_generation([{"type": "Running", "status": "True"}], 7)
    assert stamped == [{"type": "Running", "status": "True", "observedGeneration": 7}]


def test_trainingjobs_are_not_in_the_all_category_and_show_the_checkpoint_age():
    names = yaml.safe_load(CRD.read_text())["spec"]["names"]
    assert "all" not in names["categories"] and "stoker" in names["categories"]
    columns = {c["name"]: c for c in yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Checkpointed"]["type"] == "date"  # kubectl prints a date column as an age
    assert columns["Checkpointed"]["jsonPath"] == ".status.lastCheckpoint.time"


@pytest.mark.cluster
def test_kubectl_explain_describes_the_failure_policy(cluster, crd):
    # The API server publishes a new CRD's OpenAPI schema (which explain reads) a little after
    # the resource is served, the more so for the large pod-template schema.
    explain = lambda: cluster.kubectl("explain", "trainingjob.spec.failurePolicy", check=False)  # noqa: E731
    out = wait_for("kubectl explain to find TrainingJobs", lambda: (r := explain()).returncode == 0 and r.stdout,
                   timeout=90, interval=1).strip()
    assert "What a failure costs" in out, out
    assert "heartbeatTimeoutSeconds" in out and "A worker silent for this long" in out


@pytest.mark.cluster
def test_kubectl_delete_all_leaves_trainingjobs(cluster, kube, namespace, crd):
    create_job(kube, namespace, job_manifest("keep-me", ["python", "train.py"], replicas=1))
    cluster.kubectl("create", "configmap", "goes-away", "-n", namespace)
    cluster.kubectl("create", "service", "clusterip", "goes-away", "--tcp=80:80", "-n", namespace)
    out = cluster.kubectl("delete", "all", "--all", "-n", namespace, "--wait=false").stdout
    assert "service" in out and "trainingjob.stoker.dev" not in out, out
    got = cluster.kubectl("get", "trainingjobs", "-n", namespace, "-o", "name").stdout.split()
    assert got == ["trainingjob.stoker.dev/keep-me"]
    assert cluster.kubectl("get", "stoker", "-n", namespace, "-o", "name").stdout.split() == got


def readme_wait_recipes() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Waiting for a job to finish", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("kubectl wait")]


EXIT_SCRIPT = str(pathlib.Path(__file__).with_name("scripts") / "exit_with.py")


@pytest.mark.cluster
@pytest.mark.torch
@pytest.mark.slow
def test_readme_kubectl_wait_recipes_on_a_succeeded_and_a_failed_job(cluster, kube, namespace, process_pool,
                                                                      start_operator, tmp_path):
    succeeded_on, failed_on, first = readme_wait_recipes()
    op = start_operator(rendezvous=True, extra_env={"STOKER_OPERATOR_TORCHRUN_MAX_RESTARTS": "0"})
    # A kubeconfig whose context namespace is the test's, so the README's lines run verbatim.
    kc = tmp_path / "kubeconfig"
    kc.write_text(pathlib.Path(cluster.kubeconfig).read_text())
    cluster.kubectl("config", "set-context", "--current", f"--namespace={namespace}", f"--kubeconfig={kc}")
    env = {**os.environ, "KUBECONFIG": str(kc),
           "PATH": f"{pathlib.Path(cluster.tool('kubectl')).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(line: str, name: str, timeout: str = "120s") -> int:
        cmd = line.replace("NAME", name).replace("--timeout=24h", f"--timeout={timeout}").split("   #")[0]
        return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300).returncode

    for name, code in (("ok", "0"), ("bad", "3")):
        body = job_manifest(name, [sys.executable, EXIT_SCRIPT], replicas=1, node_selector=process_pool,
                            env={"EXIT_CODE": code})
        body["spec"]["failurePolicy"] = {"maxRestarts": 0, "backoffSeconds": 0}
        create_job(kube, namespace, body)
    assert sh(succeeded_on, "ok") == 0, op.tail()
    assert sh(failed_on, "bad") == 0, op.tail()
    assert sh(first, "ok") == 0 and sh(first, "bad") == 1
    # and the opposite waits do not return early: they time out
    assert sh(failed_on, "ok", timeout="3s") != 0 and sh(succeeded_on, "bad", timeout="3s") != 0
    job = kube.custom.get_namespaced_custom_object("stoker.dev", "v1alpha1", namespace, "trainingjobs", "ok")
    gen = job["metadata"]["generation"]
    assert {c["type"]: c.get("observedGeneration") for c in job["status"]["conditions"]} == {
        c["type"]: gen for c in job["status"]["conditions"]}
