"""Every job that cannot run says why: on the real API server, scheduler and nodes, with the
operator running (resync 1 s), each case shows up in the job's conditions, status.reason,
an Event and `stoker describe`/`stoker get`, in words that say what to do, and the
operator's log has no traceback for it."""
from __future__ import annotations

import json
import sys

import pytest

from .conftest import create_job, get_job, job_manifest, wait_for, worker_pods

pytestmark = [pytest.mark.cluster]


def _status(kube, ns, name):
    return get_job(kube, ns, name).get("status") or {}


def _cond(kube, ns, name, type_):
    return next((c for c in _status(kube, ns, name).get("conditions") or [] if c["type"] == type_), None)


def _waiting(kube, ns, name, reason):
    c = _cond(kube, ns, name, "Waiting")
    return c if c and c["status"] == "True" and c["reason"] == reason else None


def _events(cluster, ns, name):
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [(e.get("reason"), e.get("message") or e.get("note") or "") for e in items
            if (e.get("involvedObject") or e.get("regarding") or {}).get("name") == name]


def _cli(cluster, ns, *argv):
    from stoker.cli.main import main
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([*argv, "--kubeconfig", str(cluster.kubeconfig), "-n", ns])
    return out.getvalue()


def _no_traceback(op):
    log = op.log_path.read_text(errors="replace")
    assert "Traceback" not in log, op.tail(60)


def _says(cluster, kube, ns, name, reason, *words, health="WAITING"):
    """The reason and words appear in status, an Event, `stoker describe` and `stoker get`."""
    st = _status(kube, ns, name)
    assert st["reason"] == reason and all(w in st["message"] for w in words), st
    events = _events(cluster, ns, name)
    assert any(r == reason and all(w in m for w in words) for r, m in events), events
    describe = _cli(cluster, ns, "describe", name)
    assert reason in describe and all(w in describe for w in words), describe
    get = json.loads(_cli(cluster, ns, "get", name, "-o", "json"))
    row = get["items"][0] if "items" in get else get[0] if isinstance(get, list) else get
    assert row["health"] == health, row


def test_a_pod_the_api_server_refuses_fails_the_job_with_the_servers_words(cluster, kube, namespace, kwok_pool,
                                                                          start_operator):
    op = start_operator()
    body = job_manifest("badname", ["python", "train.py"], replicas=1, node_selector=kwok_pool)
    body["spec"]["template"]["spec"]["containers"][0]["name"] = "Trainer_1"  # the CRD allows it, a pod does not
    create_job(kube, namespace, body)
    wait_for("InvalidPodTemplate", lambda: _status(kube, namespace, "badname").get("phase") == "Failed",
             timeout=60, on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "badname", "InvalidPodTemplate", "spec.containers[0].name", "fix spec.template",
          health="FAILED")
    inc = _status(kube, namespace, "badname")["incidents"][-1]
    assert inc["kind"] == "JobFailed" and "Trainer_1" in inc["error"]
    assert worker_pods(kube, namespace, "badname") == []
    _no_traceback(op)


def test_quota_makes_the_job_wait_and_say_so_until_it_is_freed(cluster, kube, namespace, kwok_pool, start_operator):
    cluster.kubectl("create", "quota", "no-pods", "--hard=pods=0", "-n", namespace)
    op = start_operator()
    create_job(kube, namespace, job_manifest("quota", ["python", "train.py"], replicas=2, node_selector=kwok_pool))
    wait_for("QuotaExceeded", lambda: _waiting(kube, namespace, "quota", "QuotaExceeded"), timeout=60,
             on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "quota", "QuotaExceeded", "exceeded quota", "free quota")
    assert _status(kube, namespace, "quota")["phase"] == "Created"
    assert sum(r == "QuotaExceeded" for r, _ in _events(cluster, namespace, "quota")) == 1  # not one per resync
    cluster.kubectl("delete", "quota", "no-pods", "-n", namespace)
    wait_for("Running", lambda: _status(kube, namespace, "quota").get("phase") == "Running", timeout=60,
             on_timeout=lambda: op.tail(30))
    assert _cond(kube, namespace, "quota", "Waiting")["status"] == "False"
    _no_traceback(op)


def test_a_limitrange_refusal_is_a_retried_wait_with_the_servers_words(cluster, kube, namespace, kwok_pool,
                                                                          start_operator):
    limits = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small"},
              "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}}]}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(limits))
    op = start_operator()
    body = job_manifest("toobig", ["python", "train.py"], replicas=1, node_selector=kwok_pool)
    body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2"}}
    create_job(kube, namespace, body)
    wait_for("PodCreateRefused", lambda: _waiting(kube, namespace, "toobig", "PodCreateRefused"), timeout=60,
             on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "toobig", "PodCreateRefused", "maximum cpu usage per Container is 1",
          "retrying every resync")
    assert _status(kube, namespace, "toobig")["phase"] == "Created"  # it may pass once the LimitRange changes
    _no_traceback(op)


def test_an_unschedulable_job_says_the_schedulers_words_and_fails_after_its_pending_timeout(
        cluster, kube, namespace, kwok_pool, start_operator):
    op = start_operator()
    big = job_manifest("big", ["python", "train.py"], replicas=2, node_selector=kwok_pool)
    big["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 64}}
    create_job(kube, namespace, big)
    c = wait_for("Unschedulable", lambda: _waiting(kube, namespace, "big", "Unschedulable"), timeout=60,
                 on_timeout=lambda: op.tail(30))
    assert "Insufficient nvidia.com/gpu" in c["message"] and "waiting since 20" in c["message"]
    _says(cluster, kube, namespace, "big", "Unschedulable", "Insufficient nvidia.com/gpu",
          "lower the template's resource requests")
    assert _status(kube, namespace, "big")["phase"] == "Created"  # the default keeps waiting

    timed = json.loads(json.dumps(big))
    timed["metadata"]["name"] = "big-timeout"
    timed["spec"]["failurePolicy"]["pendingTimeoutSeconds"] = 3
    create_job(kube, namespace, timed)
    wait_for("Failed", lambda: _status(kube, namespace, "big-timeout").get("phase") == "Failed", timeout=60,
             on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "big-timeout", "Unschedulable", "pendingTimeoutSeconds=3",
          "Insufficient nvidia.com/gpu", health="FAILED")
    _no_traceback(op)


def test_a_missing_credentials_secret_holds_the_pods_and_says_which(cluster, kube, namespace, kwok_pool, bucket,
                                                                    start_operator):
    op = start_operator()
    body = job_manifest("nosecret", ["python", "train.py"], replicas=1, node_selector=kwok_pool,
                        checkpoint={"uri": f"s3://{bucket}/run", "intervalSteps": 10,
                                    "credentialsSecretRef": {"name": "team-s3"}})
    create_job(kube, namespace, body)
    wait_for("MissingSecret", lambda: _waiting(kube, namespace, "nosecret", "MissingSecret"), timeout=60,
             on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "nosecret", "MissingSecret", "Secret 'team-s3' does not exist",
          "spec.checkpoint.credentialsSecretRef.name")
    assert worker_pods(kube, namespace, "nosecret") == []  # held: nothing sits in CreateContainerConfigError
    cluster.create_s3_secret(namespace, "team-s3")
    wait_for("Running", lambda: _status(kube, namespace, "nosecret").get("phase") == "Running", timeout=60,
             on_timeout=lambda: op.tail(30))
    _no_traceback(op)


def test_a_missing_checkpoint_bucket_is_found_before_pods_start(cluster, kube, namespace, kwok_pool, start_operator):
    cluster.create_s3_secret(namespace, "team-s3")
    op = start_operator()
    body = job_manifest("nobucket", ["python", "train.py"], replicas=1, node_selector=kwok_pool,
                        checkpoint={"uri": "s3://no-such-bucket-for-stoker/run", "intervalSteps": 10,
                                    "credentialsSecretRef": {"name": "team-s3"}})
    create_job(kube, namespace, body)
    wait_for("CheckpointBucketMissing", lambda: _waiting(kube, namespace, "nobucket", "CheckpointBucketMissing"),
             timeout=60, on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "nobucket", "CheckpointBucketMissing", "'no-such-bucket-for-stoker' does not exist",
          "create it or fix the URI")
    assert worker_pods(kube, namespace, "nobucket") == []
    _no_traceback(op)


def test_a_container_the_node_cannot_configure_says_why(cluster, kube, namespace, process_pool, start_operator):
    op = start_operator()
    body = job_manifest("badwd", ["python", "train.py"], replicas=1, node_selector=process_pool)
    body["spec"]["template"]["spec"]["containers"][0]["workingDir"] = "/no/such/dir/for/stoker"
    create_job(kube, namespace, body)
    wait_for("CreateContainerConfigError", lambda: _waiting(kube, namespace, "badwd", "CreateContainerConfigError"),
             timeout=60, on_timeout=lambda: op.tail(30))
    _says(cluster, kube, namespace, "badwd", "CreateContainerConfigError", "/no/such/dir/for/stoker")
    _no_traceback(op)


@pytest.mark.torch
def test_a_failed_trainer_tells_what_it_said_and_a_missing_executable_says_so(cluster, kube, namespace,
                                                                              process_pool, start_operator):
    """Two jobs at once (torchrun's start-up is the slow part): one whose trainer prints its
    reason and exits 2, one whose command does not exist."""
    op = start_operator(rendezvous=True, extra_env={"STOKER_OPERATOR_TORCHRUN_MAX_RESTARTS": "0"})
    said = "import sys; print('bad config: lr must be > 0', flush=True); sys.exit(2)"
    for name, command in (("said", [sys.executable, "-c", said]), ("noexe", ["no-such-trainer", "--lr", "1"])):
        body = job_manifest(name, command, replicas=1, node_selector=process_pool)
        body["spec"]["failurePolicy"] = {"maxRestarts": 0, "backoffSeconds": 0}
        create_job(kube, namespace, body)
    for name in ("said", "noexe"):
        wait_for(f"{name} Failed", lambda: _status(kube, namespace, name).get("phase") == "Failed", timeout=180,
                 on_timeout=lambda: op.tail(30))
    st = _status(kube, namespace, "said")
    assert "bad config: lr must be > 0" in st["message"], st["message"]
    assert st["incidents"] and st["incidents"][-1]["kind"] == "JobFailed"       # the final failure is an incident
    assert st["incidents"][-1]["error"].splitlines()[-1] == "bad config: lr must be > 0"
    describe = _cli(cluster, namespace, "describe", "said")
    assert "Last error" in describe and "bad config: lr must be > 0" in describe
    st = _status(kube, namespace, "noexe")
    assert "cannot run 'no-such-trainer'" in st["message"] and "containers[0].command" in st["message"], st
    assert st["incidents"][-1]["exitCode"] == 127
    _no_traceback(op)


def test_a_failing_init_container_fails_the_job_with_its_own_words(cluster, kube, namespace, process_pool,
                                                                   start_operator):
    """Repeated init failures are the user's crash: each one is an incident carrying what the init
    container printed, and the job that spends its budget says it in its message and describe."""
    op = start_operator()
    said = "import sys; print('cannot fetch the tokenizer: /data/tok.json missing', flush=True); sys.exit(3)"
    body = job_manifest("initfail", [sys.executable, "-c", "print('never runs')"], replicas=1,
                        node_selector=process_pool)
    body["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "fetch", "image": "local/python", "command": [sys.executable, "-c", said]}]
    body["spec"]["failurePolicy"] = {"maxRestarts": 1, "backoffSeconds": 0}
    create_job(kube, namespace, body)
    wait_for("initfail Failed", lambda: _status(kube, namespace, "initfail").get("phase") == "Failed", timeout=120,
             on_timeout=lambda: op.tail(30))
    st = _status(kube, namespace, "initfail")
    words = "cannot fetch the tokenizer: /data/tok.json missing"
    assert words in st["message"], st["message"]
    assert st["restarts"]["userError"] == 1, st["restarts"]
    errors = [i.get("error") or "" for i in st["incidents"]]
    assert len(st["incidents"]) == 2 and all(words in e for e in errors), st["incidents"]
    assert st["incidents"][-1]["kind"] == "JobFailed" and st["incidents"][-1]["exitCode"] == 3
    describe = _cli(cluster, namespace, "describe", "initfail")
    assert "Last error" in describe and words in describe, describe
    _no_traceback(op)
