"""Issue 17: a pod of another namespace cannot reach a running job's rendezvous, through the
real operator (gateway, job Secrets, per-job stores) and a real pod of a TrainingJob there;
with the store in the operator (one replica) and with the separate store of an HA install
(tokens derived from the install key). The victim's own token does reach the key, so "not
seen" is not a wrong key name."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import pathlib
import secrets
import subprocess
import sys

import pytest

from stoker.common import rdzv_lock
from stoker.common.auth import key_id
from stoker.operator.config import env_for
from stoker.operator.heartbeats import secret_name
from stoker.operator.rendezvous import port_open
from tests.operator_tests.conftest import create_job, free_port, wait_for, worker_pods

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


@pytest.fixture
def separate_store(tmp_path):
    """The HA install's store as the chart runs it (``python -m stoker.operator.rdzv_gateway``,
    the install key from the environment, no API access), on a free port."""
    key, port = secrets.token_urlsafe(36), free_port()
    log = open(tmp_path / "store.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "stoker.operator.rdzv_gateway", "--port", str(port)],
                            env={**os.environ, env_for("rendezvous_key"): key}, stdout=log, stderr=subprocess.STDOUT)
    wait_for("the separate store", lambda: port_open("127.0.0.1", port), timeout=60,
             on_timeout=lambda: (tmp_path / "store.log").read_text())
    yield key, port
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("store", ["operator", "separate"])
def test_a_pod_of_another_namespace_cannot_reach_a_running_job_s_rendezvous(
        cluster, kube, namespace, heartbeat_operator, recovery_pool, tmp_path, request, store):
    from kubernetes import client

    other = f"{namespace[:46]}-other-{store[:3]}"   # one per variant: a deleted one lingers
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        extra, suffix = {}, ""
        if store == "separate":   # an HA install: the chart's separate store, tokens from its key
            key, port = request.getfixturevalue("separate_store")
            extra = {"STOKER_OPERATOR_RENDEZVOUS_STORE": "separate", "STOKER_OPERATOR_RENDEZVOUS_PORT": port,
                     env_for("rendezvous_key"): key}
            suffix = f"-{key_id(key)}"
        op = heartbeat_operator(STOKER_OPERATOR_NAMESPACES=f"{namespace},{other}", **extra)
        rendezvous_port = int(extra.get("STOKER_OPERATOR_RENDEZVOUS_PORT", op.rendezvous_port))
        create_job(kube, namespace, _job("victim", "steps.py", {"STEPS": "120", "STEP_S": "0.5"}, recovery_pool))
        wait_for("the victim training",
                 lambda: (status(kube, namespace, "victim").get("metrics") or {}).get("step", -1) >= 1,
                 timeout=180, on_timeout=diagnostics(kube, namespace, "victim", op))
        [pod] = worker_pods(kube, namespace, "victim")
        rdzv_id = next(a.split("=", 1)[1] for a in pod["spec"]["containers"][0]["command"]
                       if a.startswith("--rdzv-id="))
        key = f"torch.rendezvous.{rdzv_id}"
        gateway = f"127.0.0.1:{rendezvous_port}"

        # The control: with the victim's own token the key is there.
        secret = kube.core.read_namespaced_secret(secret_name("victim", suffix), namespace).data
        token = base64.b64decode(next(iter(secret.values()))).decode()
        from torch.distributed import TCPStore
        fwd = rdzv_lock.Forwarder(("127.0.0.1", rendezvous_port), namespace, "victim", token)
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
