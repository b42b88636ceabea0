"""Real torchrun elastic jobs on process nodes: rendezvous through the operator's
store, gloo all-reduce over the world, elastic scale up and down, completion."""
from __future__ import annotations

import json
import pathlib
import sys
import time

import pytest

from .conftest import create_job, diagnostics, get_job, job_manifest, patch_job, wait_for, worker_pods

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

SCRIPT = str(pathlib.Path(__file__).with_name("scripts") / "allreduce.py")


def records(out: pathlib.Path) -> list[dict]:
    rows = []
    for f in sorted(out.glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def phase(kube, namespace, name):
    return get_job(kube, namespace, name).get("status", {}).get("phase")


def test_two_worker_job_all_reduces_over_world_two_and_succeeds(kube, namespace, process_pool, start_operator, tmp_path):
    op = start_operator(rendezvous=True)
    out = tmp_path / "out"
    out.mkdir()
    create_job(kube, namespace, job_manifest("ar", [sys.executable, SCRIPT], replicas=2,
                                              node_selector=process_pool, env={"OUT_DIR": str(out)}))
    wait_for("job Succeeded", lambda: phase(kube, namespace, "ar") == "Succeeded", timeout=180,
             on_timeout=diagnostics(kube, namespace, "ar", op))
    rows = records(out)
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert {r["world"] for r in rows} == {2} and {r["sum"] for r in rows} == {2.0}
    assert {r["pod"] for r in rows} == {"ar-worker-0-0", "ar-worker-1-0"}
    # The process-group store lives on rank 0's pod IP, not on a DNS name.
    assert {r["master"] for r in rows} <= {r["pod_ip"] for r in rows}
    pods = worker_pods(kube, namespace, "ar")
    assert [p["status"]["phase"] for p in pods] == ["Succeeded", "Succeeded"]
    job = get_job(kube, namespace, "ar")
    assert job["status"]["restarts"]["total"] == 0 and job["status"]["completionTime"]


def test_elastic_job_sees_new_world_sizes_when_scaled_and_still_succeeds(kube, namespace, process_pool,
                                                                         start_operator, tmp_path):
    op = start_operator(rendezvous=True)
    out = tmp_path / "out"
    out.mkdir()
    create_job(kube, namespace, job_manifest("el", [sys.executable, SCRIPT, "--until-flag"], replicas=2,
                                              minReplicas=1, maxReplicas=3,
                                              node_selector=process_pool, env={"OUT_DIR": str(out)}))
    diag = diagnostics(kube, namespace, "el", op)
    wait_for("world size 2", lambda: any(r["world"] == 2 for r in records(out)), timeout=120, on_timeout=diag)
    patch_job(kube, namespace, "el", {"spec": {"replicas": 3}})
    wait_for("world size 3 on all three workers",
             lambda: {r["pod"] for r in records(out) if r["world"] == 3} >= {f"el-worker-{i}-0" for i in range(3)},
             timeout=120, on_timeout=diag)
    scaled_down_at = time.time()
    patch_job(kube, namespace, "el", {"spec": {"replicas": 2}})
    wait_for("both survivors in a world of 2 after scaling down",
             lambda: {r["pod"] for r in records(out) if r["world"] == 2 and r["time"] > scaled_down_at}
             == {"el-worker-0-0", "el-worker-1-0"}, timeout=120, on_timeout=diag)
    (out / "finish").touch()
    wait_for("job Succeeded", lambda: phase(kube, namespace, "el") == "Succeeded", timeout=120, on_timeout=diag)
    worlds = [r["world"] for r in sorted(records(out), key=lambda r: r["time"])]
    assert worlds[0] == 2 and 3 in worlds and worlds[-1] == 2
    job = get_job(kube, namespace, "el")
    assert job["status"]["restarts"]["total"] == 0  # elastic changes are not job restarts
    assert job["status"]["incarnation"] == 0


FAIL_SCRIPT = str(pathlib.Path(__file__).with_name("scripts") / "exit_with.py")


def test_failing_workers_restart_the_job_until_the_budget_is_spent(cluster, kube, namespace, process_pool,
                                                                   start_operator):
    op = start_operator(rendezvous=True, extra_env={"STOKER_OPERATOR_TORCHRUN_MAX_RESTARTS": "0"})
    body = job_manifest("fail", [sys.executable, FAIL_SCRIPT], replicas=2, node_selector=process_pool,
                        env={"EXIT_CODE": "3"})
    # every failure restarts the job as a new incarnation (not in place: tests/recovery_tests/test_e2e_inplace.py)
    body["spec"]["failurePolicy"] = {"maxRestarts": 1, "backoffSeconds": 0, "inPlaceRestarts": 0}
    create_job(kube, namespace, body)
    wait_for("job Failed", lambda: phase(kube, namespace, "fail") == "Failed", timeout=120,
             on_timeout=diagnostics(kube, namespace, "fail", op))
    st = get_job(kube, namespace, "fail")["status"]
    assert st["reason"] == "RestartLimitExceeded" and "maxRestarts=1" in st["message"]
    assert st["restarts"] == {"userError": 1, "infrastructure": 0, "preemption": 0, "total": 1}
    assert st["incarnation"] == 1
    assert [i.get("exitCode") for i in st["incidents"]] == [3, 3]  # the user's code, through torchrun
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Failed"] == "True" and conds.get("Restarting") == "False" and conds["Running"] == "False"
    events = cluster.kubectl("describe", "tj", "fail", "-n", namespace).stdout.split("Events:")[-1]
    assert "WorkerFailed" in events and "RestartLimitExceeded" in events


def test_failjob_exit_code_rule_fails_without_restarting(kube, namespace, process_pool, start_operator):
    op = start_operator(rendezvous=True, extra_env={"STOKER_OPERATOR_TORCHRUN_MAX_RESTARTS": "0"})
    body = job_manifest("rule", [sys.executable, FAIL_SCRIPT], replicas=1, node_selector=process_pool,
                        env={"EXIT_CODE": "42"})
    body["spec"]["failurePolicy"] = {"maxRestarts": 5, "exitCodeRules": [{"exitCodes": [42], "action": "FailJob"}]}
    create_job(kube, namespace, body)
    wait_for("job Failed", lambda: phase(kube, namespace, "rule") == "Failed", timeout=120,
             on_timeout=diagnostics(kube, namespace, "rule", op))
    st = get_job(kube, namespace, "rule")["status"]
    assert st["reason"] == "ExitCodeRule" and "exit code 42" in st["message"]
    assert st["restarts"]["total"] == 0 and st["incarnation"] == 0


ENV_SCRIPT = str(pathlib.Path(__file__).with_name("scripts") / "env_dump.py")


def test_workers_get_the_env_contract_with_credentials_from_the_secret(cluster, kube, namespace, process_pool,
                                                                       start_operator, tmp_path, bucket):
    op = start_operator(rendezvous=True)
    secret = cluster.create_s3_secret(namespace)
    out = tmp_path / "out"
    out.mkdir()
    body = job_manifest("env", [sys.executable, ENV_SCRIPT], replicas=1, node_selector=process_pool,
                        env={"OUT_DIR": str(out)},
                        checkpoint={"uri": f"s3://{bucket}/env", "intervalSteps": 5, "keep": 2,
                                    "credentialsSecretRef": {"name": secret}})
    create_job(kube, namespace, body)
    wait_for("job Succeeded", lambda: phase(kube, namespace, "env") == "Succeeded", timeout=120,
             on_timeout=diagnostics(kube, namespace, "env", op))
    env = json.loads((out / "env-worker-0-0.env.json").read_text())
    s3 = cluster.s3_env()
    assert env["AWS_ACCESS_KEY_ID"] == s3["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"] == s3["AWS_SECRET_ACCESS_KEY"]
    assert env["AWS_ENDPOINT_URL_S3"] == s3["AWS_ENDPOINT_URL_S3"]
    assert env["STOKER_CHECKPOINT_URI"] == f"s3://{bucket}/env" and env["STOKER_CHECKPOINT_INTERVAL_STEPS"] == "5"
    assert env["STOKER_CHECKPOINT_KEEP"] == "2"
    assert env["STOKER_JOB_NAME"] == "env" and env["STOKER_JOB_NAMESPACE"] == namespace
    assert env["STOKER_POD_NAME"] == "env-worker-0-0" and env["STOKER_REPLICA_INDEX"] == "0"
    assert env["STOKER_INCARNATION"] == "0"
    pod = worker_pods(kube, namespace, "env")[0]
    assert env["STOKER_POD_IP"] == pod["status"]["podIP"] == env["MASTER_ADDR"]
    assert env["WORLD_SIZE"] == "1" and env["RANK"] == "0"
    # the credentials are references in the pod, never literal values
    penv = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert "value" not in penv["AWS_SECRET_ACCESS_KEY"]


def test_operator_restart_restarts_running_torch_jobs_without_spending_the_budget(kube, namespace, process_pool,
                                                                                  start_operator, tmp_path):
    """The rendezvous store dies with the operator: the agents exit 86, the new operator
    restarts the job as a new incarnation against its new store, budget untouched."""
    op = start_operator(rendezvous=True)
    out = tmp_path / "out"
    out.mkdir()
    body = job_manifest("rs", [sys.executable, SCRIPT, "--until-flag"], replicas=2, node_selector=process_pool,
                        env={"OUT_DIR": str(out)})
    body["spec"]["failurePolicy"] = {"maxRestarts": 0, "backoffSeconds": 0}
    create_job(kube, namespace, body)
    diag = diagnostics(kube, namespace, "rs", op)
    wait_for("world size 2", lambda: {r["pod"] for r in records(out) if r["world"] == 2} == {"rs-worker-0-0", "rs-worker-1-0"},
             timeout=120, on_timeout=diag)
    op.kill()
    op.start()
    op.wait_ready()
    wait_for("incarnation 1 training in a world of 2",
             lambda: {r["pod"] for r in records(out) if r["world"] == 2} >= {"rs-worker-0-1", "rs-worker-1-1"},
             timeout=180, on_timeout=diag)
    (out / "finish").touch()
    wait_for("job Succeeded", lambda: phase(kube, namespace, "rs") == "Succeeded", timeout=120, on_timeout=diag)
    st = get_job(kube, namespace, "rs")["status"]
    assert st["incarnation"] == 1 and st["restarts"]["total"] == 1
    # counted as infrastructure, which never spends failurePolicy.maxRestarts (=0 here, still fine)
    assert st["restarts"]["userError"] == 0 and st["restarts"]["infrastructure"] == 1
    assert st["incidents"][0]["exitCode"] == 86 and st["incidents"][0]["detectedCause"] == "RendezvousLost"
