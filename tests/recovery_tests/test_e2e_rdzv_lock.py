"""Issue 17: a pod of another namespace cannot reach a running job's rendezvous, through the
real operator (gateway, job Secrets, per-job stores) and a real pod of a TrainingJob there.
The victim's own token does reach the key, so "not seen" is not a wrong key name."""
from __future__ import annotations

import base64
import datetime as dt
import json
import pathlib
import sys

import pytest

from stoker.common import rdzv_lock
from tests.operator_tests.conftest import create_job, wait_for, worker_pods

from .e2e import diagnostics, status

pytestmark = [pytest.mark.cluster, pytest.mark.torch]

SCRIPTS = pathlib.Path(__file__).with_name("scripts")


def _job(name: str, script: str, env: dict[str, str], pool: dict) -> dict:
    return {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": 1, "template": {"spec": {
                "terminationGracePeriodSeconds": 5, "nodeSelector": pool,
                "containers": [{"name": "trainer", "image": "local/python",
                                "command": [sys.executable, str(SCRIPTS / script)],
                                "env": [{"name": k, "value": v} for k, v in env.items()]}]}}}}


def test_a_pod_of_another_namespace_cannot_reach_a_running_job_s_rendezvous(
        cluster, kube, namespace, heartbeat_operator, recovery_pool, tmp_path):
    from kubernetes import client

    other = f"{namespace[:50]}-other"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        op = heartbeat_operator(STOKER_OPERATOR_NAMESPACES=f"{namespace},{other}")
        create_job(kube, namespace, _job("victim", "steps.py", {"STEPS": "120", "STEP_S": "0.5"}, recovery_pool))
        wait_for("the victim training",
                 lambda: (status(kube, namespace, "victim").get("metrics") or {}).get("step", -1) >= 1,
                 timeout=180, on_timeout=diagnostics(kube, namespace, "victim", op))
        [pod] = worker_pods(kube, namespace, "victim")
        rdzv_id = next(a.split("=", 1)[1] for a in pod["spec"]["containers"][0]["command"]
                       if a.startswith("--rdzv-id="))
        key = f"torch.rendezvous.{rdzv_id}"
        gateway = f"127.0.0.1:{op.rendezvous_port}"

        # The control: with the victim's own token the key is there.
        secret = kube.core.read_namespaced_secret("stoker-victim-token", namespace).data
        token = base64.b64decode(next(iter(secret.values()))).decode()
        from torch.distributed import TCPStore
        fwd = rdzv_lock.Forwarder(("127.0.0.1", op.rendezvous_port), namespace, "victim", token)
        assert TCPStore("127.0.0.1", fwd.port, is_master=False, timeout=dt.timedelta(seconds=10)).check([key])

        result_path = tmp_path / "attack.json"
        create_job(kube, other, _job("attacker", "rdzv_attack.py", {
            "GATEWAY": gateway, "VICTIM_KEY": key, "VICTIM_NAMESPACE": namespace, "VICTIM_JOB": "victim",
            "RESULT_PATH": str(result_path)}, recovery_pool))
        wait_for("the attacker's result",
                 lambda: status(kube, other, "attacker").get("phase") in ("Succeeded", "Failed"),
                 timeout=180, on_timeout=diagnostics(kube, other, "attacker", op))
        result = json.loads(result_path.read_text())
        assert result["raw"].startswith("refused"), result
        assert result["victim_token"].startswith("refused"), result
        assert result["own_store"] == "reached a store without the key", result
        # ...and the victim trained on, untouched.
        assert status(kube, namespace, "victim").get("phase") in ("Running", "Succeeded")
        assert (status(kube, namespace, "victim").get("restarts") or {}).get("total", 0) == 0
    finally:
        kube.core.delete_namespace(other)
