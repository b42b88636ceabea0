"""Worker pod rendering: torchrun wrapping, env contract, labels, ownership."""
from __future__ import annotations

import pytest

from stoker.common import env as E
from stoker.common import labels as L
from stoker.operator.jobspec import job_view
from stoker.operator.podview import pod_view
from stoker.operator.pods import (RenderConfig, launcher_command, pod_name, render_pod,
                                  rendezvous_id, spec_hash)

from .helpers import UID, job_body

FLAGS = ["--nnodes=1:2"]


L_ = "stoker.operator.launch"


@pytest.mark.parametrize("cmd, expected", [
    (["python", "train.py", "--lr", "1"], ["python", "-m", L_, *FLAGS, "train.py", "--lr", "1"]),
    (["/opt/venv/bin/python3.11", "-m", "pkg.train", "x"],
     ["/opt/venv/bin/python3.11", "-m", L_, *FLAGS, "-m", "pkg.train", "x"]),
    (["python", "-u", "train.py"], ["python", "-m", L_, *FLAGS, "--no-python", "python", "-u", "train.py"]),
    (["/usr/bin/train", "a"], ["python3", "-m", L_, *FLAGS, "--no-python", "/usr/bin/train", "a"]),
])
def test_user_command_maps_onto_torchrun(cmd, expected):
    assert launcher_command(cmd, FLAGS) == expected


def test_plain_torchrun_launcher_for_images_without_stoker():
    assert launcher_command(["python", "t.py"], FLAGS, "torchrun") == ["python", "-m", "torch.distributed.run", *FLAGS, "t.py"]
    assert launcher_command(["/bin/t"], FLAGS, "torchrun") == ["torchrun", *FLAGS, "--no-python", "/bin/t"]


def test_launch_maps_worker_exit_codes_like_a_shell():
    from stoker.operator.launch import exit_code_of
    assert [exit_code_of(c) for c in (3, -9, -15, 0, 300)] == [3, 137, 143, 1, 1]


def test_empty_command_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match=r"containers\[0\]\.command"):
        launcher_command([], FLAGS)


def _pod(**spec):
    body = job_body(**spec)
    return body, render_pod(job_view(body), 1, 3, RenderConfig(rendezvous_endpoint="10.0.0.5:29400"))


def test_pod_runs_torchrun_elastic_against_the_operator_store_as_a_client():
    body, pod = _pod(minReplicas=1, maxReplicas=4, nprocPerNode=2)
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "stoker.operator.launch"]
    assert "--nnodes=1:4" in cmd and "--nproc-per-node=2" in cmd
    assert "--rdzv-backend=c10d" in cmd and "--rdzv-endpoint=10.0.0.5:29400" in cmd
    assert f"--rdzv-id=ns-demo-{UID[:8]}-3" in cmd
    conf = next(a for a in cmd if a.startswith("--rdzv-conf="))
    assert "is_host=false" in conf
    assert f"--local-addr=$({E.POD_IP})" in cmd
    assert cmd[-3:] == ["train.py", "--steps", "10"]  # user args appended after the script
    assert "args" not in pod["spec"]["containers"][0]


def test_pod_name_labels_and_owner_are_deterministic():
    body, pod = _pod()
    meta = pod["metadata"]
    assert meta["name"] == pod_name("demo", 1, 3) == "demo-worker-1-3"
    assert meta["labels"][L.JOB_NAME] == "demo"
    assert meta["labels"][L.REPLICA_INDEX] == "1"
    assert meta["labels"][L.INCARNATION] == "3"
    assert meta["labels"][L.APP_MANAGED_BY] == L.MANAGED_BY_VALUE
    owner = meta["ownerReferences"][0]
    assert owner["uid"] == UID and owner["controller"] and owner["blockOwnerDeletion"]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_env_contract_uses_field_refs_and_secret_refs_never_literal_credentials():
    body, pod = _pod(checkpoint={"uri": "s3://bucket/run1", "intervalSteps": 50, "keep": 2, "memoryIntervalSteps": 5,
                                 "credentialsSecretRef": {"name": "s3-creds"}})
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env[E.POD_IP]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env[E.POD_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env[E.REPLICA_INDEX]["value"] == "1" and env[E.INCARNATION]["value"] == "3"
    assert env[E.JOB_UID]["value"] == UID
    assert env[E.CHECKPOINT_URI]["value"] == "s3://bucket/run1"
    assert env[E.CHECKPOINT_INTERVAL_STEPS]["value"] == "50" and env[E.CHECKPOINT_KEEP]["value"] == "2"
    assert env[E.CHECKPOINT_MEMORY_INTERVAL_STEPS]["value"] == "5"
    for key in (E.S3_ACCESS_KEY, E.S3_SECRET_KEY):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": key}
    # $(STOKER_POD_IP) is defined before anything references it
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.index(E.POD_IP) < len(names)


def test_user_env_is_kept_and_cannot_shadow_the_contract():
    body = job_body()
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "MY_VAR", "value": "1"}, {"name": E.REPLICA_INDEX, "value": "99"}]
    pod = render_pod(job_view(body), 0, 0, RenderConfig())
    env = [(e["name"], e.get("value")) for e in pod["spec"]["containers"][0]["env"]]
    assert ("MY_VAR", "1") in env
    assert [v for n, v in env if n == E.REPLICA_INDEX] == ["0"]


def test_scheduling_passes_through():
    body, pod = _pod(scheduling={"queueName": "team-a", "priorityClassName": "high", "schedulerName": "volcano"})
    assert pod["spec"]["priorityClassName"] == "high" and pod["spec"]["schedulerName"] == "volcano"


def test_a_queued_job_puts_no_queue_label_on_its_pods():
    """Kueue admits the job's one Workload; a queue label would make Kueue's pod integration queue each pod."""
    body, pod = _pod(scheduling={"queueName": "team-a"})
    assert not any(k.startswith("kueue.x-k8s.io/") for k in pod["metadata"]["labels"])
    assert not any(k.startswith("kueue.x-k8s.io/") or "min-available" in k for k in pod["metadata"]["annotations"])


def test_spec_hash_ignores_replicas_but_not_the_template():
    a = job_view(job_body(replicas=2, maxReplicas=4))
    b = job_view(job_body(replicas=3, maxReplicas=4))
    assert spec_hash(a) == spec_hash(b)
    c = job_body(replicas=2, maxReplicas=4)
    c["spec"]["template"]["spec"]["containers"][0]["image"] = "other"
    assert spec_hash(job_view(c)) != spec_hash(a)


def test_rendezvous_id_differs_for_a_recreated_job_of_the_same_name():
    a = job_view(job_body())
    b_body = job_body()
    b_body["metadata"]["uid"] = "ffffffff-new"
    assert rendezvous_id(a, 0) != rendezvous_id(job_view(b_body), 0)


def test_pod_view_reads_exit_code_of_the_trainer_container():
    body, pod = _pod()
    pod["status"] = {"phase": "Failed", "containerStatuses": [
        {"name": "sidecar", "state": {"terminated": {"exitCode": 0}}},
        {"name": "trainer", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}
    v = pod_view(pod)
    assert v.exit_code == 3 and v.index == 1 and v.incarnation == 3 and v.owner_uid == UID


def test_pod_view_ignores_pods_without_our_labels():
    assert pod_view({"metadata": {"name": "x", "labels": {}}}) is None
