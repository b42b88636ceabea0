"""Waiting that only real nodes can show: an image the kubelet cannot pull (there is no registry
here, so any image not imported into the nodes' containerd fails to pull) makes the job say
ImagePullBackOff in its status, an Event and `stoker describe`, with the operator's log free of
tracebacks. The operator runs as a local process against the real-node cluster (its workers never
start, so nothing needs to reach it from a pod)."""
from __future__ import annotations

import json

import pytest

from tests.operator_tests.conftest import CRD, OperatorProcess, job_manifest, wait_for

pytestmark = [pytest.mark.realnodes, pytest.mark.cluster, pytest.mark.slow]

MISSING_IMAGE = "stoker.invalid/no-such-image:1"


def _status(c, ns, name):
    return json.loads(c.kubectl("get", "tj", name, "-n", ns, "-o", "json").stdout).get("status") or {}


def _describe(c, ns, name):
    from stoker.cli.main import main
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["describe", name, "--kubeconfig", str(c.kubeconfig), "-n", ns])
    return out.getvalue()


def test_an_image_the_kubelet_cannot_pull_makes_the_job_say_so(real_cluster, kube_ns, tmp_path):
    c, ns = real_cluster, kube_ns.ns
    c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    c.wait_crd_established("trainingjobs.stoker.dev")
    op = OperatorProcess(c.kubeconfig, ns, tmp_path / "operator.log").start()
    try:
        op.wait_ready()
        body = job_manifest("nopull", ["python", "-c", "print(1)"], replicas=1)
        body["spec"]["template"]["spec"]["containers"][0]["image"] = MISSING_IMAGE
        kube_ns.apply(body)

        def waiting():
            conds = _status(c, ns, "nopull").get("conditions") or []
            return next((x for x in conds if x["type"] == "Waiting" and x["status"] == "True"
                         and x["reason"] == "ImagePullBackOff"), None)

        cond = wait_for("ImagePullBackOff on the job", waiting, timeout=180, on_timeout=lambda: op.tail(40))
        assert MISSING_IMAGE in cond["message"], cond
        st = _status(c, ns, "nopull")
        assert st["reason"] == "ImagePullBackOff" and MISSING_IMAGE in st["message"], st
        events = json.loads(c.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
        assert any(e.get("reason") == "ImagePullBackOff" and MISSING_IMAGE in (e.get("message") or "")
                   and e["involvedObject"].get("name") == "nopull" for e in events), events
        describe = _describe(c, ns, "nopull")
        assert "ImagePullBackOff" in describe and MISSING_IMAGE in describe, describe
        log = op.log_path.read_text(errors="replace")
        assert "Traceback" not in log, op.tail(60)
    finally:
        op.stop()
