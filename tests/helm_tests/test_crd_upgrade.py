"""The chart's documented CRD upgrade path (charts/stoker/README.md, *Upgrade*): Helm never
upgrades a CRD, so `helm upgrade` alone leaves the old schema served; the README's
`kubectl apply --server-side -f charts/stoker/crds/` brings the new one, and the
TrainingJobs that exist survive it."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.operator_tests.conftest import CRD, crd, job_manifest  # noqa: F401

from .conftest import CHART, ROOT
from .test_chart_install import Release

pytestmark = [pytest.mark.cluster]


def readme_crd_command() -> str:
    text = (CHART / "README.md").read_text().split("### Upgrade", 1)[1]
    after = text.split("apply it yourself first", 1)[1]
    return re.search(r"```sh\n(.+?)\n```", after, re.S).group(1).strip()


def previous_crd() -> dict:
    """The CRD as a previous release had it: no Checkpointed column, no condition observedGeneration."""
    doc = yaml.safe_load(CRD.read_text())
    version = doc["spec"]["versions"][0]
    version["additionalPrinterColumns"] = [c for c in version["additionalPrinterColumns"]
                                           if c["name"] != "Checkpointed"]
    cond = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]["items"]
    del cond["properties"]["observedGeneration"]
    return doc


def served_columns(cluster) -> list[str]:
    crd_now = json.loads(cluster.kubectl("get", "crd", "trainingjobs.stoker.dev", "-o", "json").stdout)
    return [c["name"] for c in crd_now["spec"]["versions"][0]["additionalPrinterColumns"]]


def test_helm_upgrade_after_a_crd_change_follows_the_documented_path(helm, cluster, namespace, tmp_path, crd):  # noqa: F811
    cmd = readme_crd_command()
    assert cmd == "kubectl apply --server-side -f charts/stoker/crds/", cmd
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(previous_crd()))
    assert "Checkpointed" not in served_columns(cluster)
    rel = Release(helm, cluster, "stoker", namespace, tmp_path)
    try:
        rel.install({})
        cluster.kubectl("create", "-n", namespace, "-f", "-",
                        input=json.dumps(job_manifest("survivor", ["python", "train.py"], replicas=1)))
        rel.upgrade({"operator": {"logLevel": "DEBUG"}})
        assert "Checkpointed" not in served_columns(cluster), "helm upgraded a CRD: the README says it never does"
        # the README's command, verbatim, from the repository root
        kubectl = cluster.tool("kubectl")
        out = subprocess.run([kubectl, f"--kubeconfig={cluster.kubeconfig}", *cmd.split()[1:]], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        cluster.wait_crd_established("trainingjobs.stoker.dev")
        assert "Checkpointed" in served_columns(cluster)
        header = cluster.kubectl("get", "tj", "-n", namespace).stdout.splitlines()[0]
        assert "CHECKPOINTED" in header, header
        assert cluster.kubectl("get", "tj", "survivor", "-n", namespace, "-o", "name").stdout.strip() == \
            "trainingjob.stoker.dev/survivor"
    finally:
        if rel.installed:
            rel.run("uninstall", rel.name, "-n", rel.namespace, check=False)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))  # the session's CRD
