"""Every on-call command against a real control plane, an operator process and
jobs on simulated (kwok) GPU nodes. `-o json` must carry the same facts as the
table."""
from __future__ import annotations

import re
import uuid

import pytest
import yaml

from stoker.common import labels as L

from .conftest import create_job, get_job, gpu_job, running, wait_for, worker_pods

pytestmark = pytest.mark.cluster


def table(text: str) -> list[dict]:
    """Parse an aligned table by the header's column starts."""
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [m.start() for m in re.finditer(r"(?:(?<=\s{2})|^)\S", lines[0])]
    heads = [lines[0][a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
    return [{h: line[a:b].strip() for h, a, b in zip(heads, starts, starts[1:] + [None])} for line in lines[1:]]


@pytest.fixture
def job2(kube, namespace, cli_kwok_pool, start_operator):
    """An elastic job (1..4 workers, 2 now) Running 2/2 on kwok nodes, and its operator."""
    op = start_operator()
    create_job(kube, namespace, gpu_job("train", cli_kwok_pool, minReplicas=1, maxReplicas=4))
    wait_for("Running 2/2", lambda: running(kube, namespace, "train", 2), on_timeout=op.tail)
    return op


def test_get_table_and_json_agree(stoker, namespace, job2):
    r = stoker("get")
    assert r.rc == 0, r.err
    [row] = table(r.out)
    assert (row["NAME"], row["PHASE"], row["WORKERS"], row["RESTARTS"], row["HEALTH"]) == \
        ("train", "Running", "2/2", "0", "OK")
    assert list(row) == ["NAME", "PHASE", "WORKERS", "STEP", "TOKENS/S", "LAST CKPT", "RESTARTS", "HEALTH", "AGE"]
    [item] = stoker("get", "-o", "json").json()["items"]
    assert (item["name"], item["phase"], item["workers"], item["restarts"], item["health"]) == \
        ("train", "Running", {"ready": 2, "desired": 2}, 0, "OK")
    assert item["step"] is None and row["STEP"] == "-"    # no heartbeats on kwok: shown as unknown
    one = yaml.safe_load(stoker("get", "train", "-o", "yaml").out)
    assert one["name"] == "train" and one["workers"] == {"ready": 2, "desired": 2}
    everywhere = table(stoker("get", "-A", ns=None).out)
    assert {"NAMESPACE": namespace, "NAME": "train"}.items() <= next(
        r for r in everywhere if r["NAMESPACE"] == namespace).items()


def test_unknown_job_lists_near_names_and_exits_3(stoker, job2):
    r = stoker("describe", "trian")
    assert r.rc == 3
    assert 'TrainingJob "trian" not found' in r.err and "did you mean: train" in r.err


def test_describe_shows_workers_conditions_and_events(stoker, kube, namespace, job2):
    pods = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in worker_pods(kube, namespace, "train")}
    r = stoker("describe", "train")
    assert r.rc == 0, r.err
    text = r.out
    workers = table(text.split("Workers:")[1].split("Conditions:")[0])
    assert {w["POD"]: w["NODE"] for w in workers} == pods
    assert [w["RANK"] for w in workers] == ["0", "1"] and {w["READY"] for w in workers} == {"yes"}
    conditions = table(text.split("Conditions:")[1].split("Incidents:")[0])
    assert {"TYPE": "Running", "STATUS": "True"}.items() <= conditions[-1].items()
    assert "s3://" not in text.split("Spec:")[1].split("Progress:")[0]  # no checkpoint configured: '-'
    wait_for("JobCreated event", lambda: "JobCreated" in stoker("describe", "train").out.split("Events:")[1])
    d = stoker("describe", "train", "-o", "json").json()
    assert {w["pod"]: w["node"] for w in d["workers"]} == pods
    assert d["job"]["phase"] == "Running" and d["spec"]["maxReplicas"] == 4
    assert any(e["reason"] == "JobCreated" for e in d["events"]) and d["incidents"] == []


def test_top_prints_jobs_and_their_workers(stoker, job2):
    r = stoker("top", "--iterations", "2", "--interval", "0.1")
    assert r.rc == 0, r.err
    assert r.out.count("1 job(s)") == 2
    assert len(re.findall(r"rank [01]  train-worker-[01]-0  on \S+  Running  ready", r.out)) == 4
    doc = stoker("top", "--once", "-o", "json").json()
    [item] = doc["items"]
    assert item["phase"] == "Running" and [w["rank"] for w in item["workerDetails"]] == [0, 1]


def test_scale_within_range_and_clear_errors_outside(stoker, kube, namespace, job2, cli_kwok_pool):
    r = stoker("scale", "train", "--replicas", "3")
    assert r.rc == 0, r.err
    assert get_job(kube, namespace, "train")["spec"]["replicas"] == 3
    wait_for("Running 3/3", lambda: running(kube, namespace, "train", 3))
    r = stoker("scale", "train", "--replicas", "9")
    assert r.rc == 1 and "spec.maxReplicas=4" in r.err
    assert get_job(kube, namespace, "train")["spec"]["replicas"] == 3
    create_job(kube, namespace, gpu_job("fixed", cli_kwok_pool, replicas=1))
    r = stoker("scale", "fixed", "--replicas", "2")
    assert r.rc == 1 and "not elastic" in r.err and "spec.maxReplicas" in r.err
    assert stoker("scale", "nope", "--replicas", "2").rc == 3


def test_suspend_and_resume(stoker, kube, namespace, job2):
    r = stoker("suspend", "train")
    assert r.rc == 0 and "suspended" in r.out
    assert get_job(kube, namespace, "train")["spec"]["runPolicy"]["suspend"] is True
    wait_for("Suspended, no workers", lambda: get_job(kube, namespace, "train")["status"].get("phase") == "Suspended"
             and not worker_pods(kube, namespace, "train"))
    [row] = table(stoker("get").out)
    assert (row["PHASE"], row["HEALTH"]) == ("Suspended", "SUSPENDED")
    assert "already suspended" in stoker("suspend", "train").out
    r = stoker("resume", "train", "-o", "json")
    assert r.rc == 0 and r.json() == {"job": "train", "namespace": namespace, "suspend": False, "changed": True}
    wait_for("Running 2/2 again", lambda: running(kube, namespace, "train", 2))


def test_restart_job_sets_the_request_and_restart_rank_replaces_that_pod(stoker, kube, namespace, job2):
    first = {p["metadata"]["uid"] for p in worker_pods(kube, namespace, "train")}
    r = stoker("restart", "train", "-o", "json")
    assert r.rc == 0, r.err
    rid = r.json()["requestId"]
    assert get_job(kube, namespace, "train")["metadata"]["annotations"][L.RESTART_REQUEST] == rid
    # The operator acknowledges the request and restarts the whole job as a new incarnation.
    wait_for("restart request handled", lambda: get_job(kube, namespace, "train")["metadata"]["annotations"]
             .get(L.RESTART_REQUEST_HANDLED) == rid)
    wait_for("incarnation 1 running 2/2", lambda: get_job(kube, namespace, "train")["status"].get("incarnation") == 1
             and running(kube, namespace, "train", 2)
             and not first & {p["metadata"]["uid"] for p in worker_pods(kube, namespace, "train")})
    before = {p["metadata"]["labels"][L.REPLICA_INDEX]: p["metadata"]["uid"] for p in worker_pods(kube, namespace, "train")}
    r = stoker("restart", "train", "--replica", "1")
    assert r.rc == 0 and "train-worker-1-1" in r.out
    wait_for("rank 1 replaced by a new pod", lambda: any(
        p["metadata"]["labels"][L.REPLICA_INDEX] == "1" and p["metadata"]["uid"] != before["1"]
        and not p["metadata"].get("deletionTimestamp") for p in worker_pods(kube, namespace, "train")))
    assert [p["metadata"]["uid"] for p in worker_pods(kube, namespace, "train")
            if p["metadata"]["labels"][L.REPLICA_INDEX] == "0"] == [before["0"]]   # rank 0 untouched
    r = stoker("restart", "train", "--replica", "7")
    assert r.rc == 3 and "replica index 7" in r.err
    r = stoker("restart", "train", "--rank", "0")  # kwok workers send no heartbeats: no global ranks known
    assert r.rc == 3 and "--replica" in r.err


def test_checkpoint_request_is_acknowledged_and_wait_times_out_clearly_when_no_worker_commits(stoker, kube, namespace, job2):
    r = stoker("checkpoint", "train", "-o", "json")
    assert r.rc == 0, r.err
    rid = r.json()["requestId"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", rid)
    assert get_job(kube, namespace, "train")["metadata"]["annotations"][L.CHECKPOINT_REQUEST] == rid
    # The operator acknowledges the request (and relays CHECKPOINT_NOW over gRPC), but these workers
    # run on kwok nodes and never checkpoint: --wait must give up clearly and say where to look.
    wait_for("checkpoint request acknowledged", lambda: get_job(kube, namespace, "train")["metadata"]["annotations"]
             .get(L.CHECKPOINT_REQUEST_HANDLED) == rid)
    r = stoker("checkpoint", "train", "--wait", "--timeout", "1.5")
    assert r.rc == 5
    assert "timed out after 1.5s" in r.err and "status.lastCheckpoint is none" in r.err
    assert "no newer checkpoint was committed" in r.err and "stoker logs train" in r.err
    new = get_job(kube, namespace, "train")["metadata"]["annotations"][L.CHECKPOINT_REQUEST]
    assert new != rid   # every request gets a fresh id


@pytest.fixture
def own_nodes(cluster):
    """Two kwok nodes only this test schedules onto (drain acts on everything on a node)."""
    value = f"drain-{uuid.uuid4().hex[:6]}"
    names = cluster.add_kwok_nodes(2, gpus=8, prefix=value, labels={"stoker.dev/test-pool": value})
    yield {"stoker.dev/test-pool": value}
    cluster.delete_nodes(names)


def test_drain_moves_workers_off_the_node(stoker, cluster, kube, namespace, own_nodes, start_operator):
    op = start_operator()
    create_job(kube, namespace, gpu_job("train", own_nodes))
    wait_for("Running 2/2", lambda: running(kube, namespace, "train", 2), on_timeout=op.tail)
    pods = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in worker_pods(kube, namespace, "train")}
    node = pods["train-worker-0-0"]
    on_node = sorted(n for n, nd in pods.items() if nd == node)
    plan = stoker("drain", node, "--dry-run", "-o", "json").json()
    assert plan["jobs"] == [{"namespace": namespace, "job": "train", "pods": on_node}]
    assert not cluster.api("GET", f"/api/v1/nodes/{node}")[1]["spec"].get("unschedulable")  # dry run: no change
    r = stoker("drain", node, "--checkpoint-timeout", "1")
    assert r.rc == 0, r.err
    assert f"node {node} cordoned" in r.out
    assert all(f"pod {namespace}/{p} deleted" in r.out for p in on_node)
    assert cluster.api("GET", f"/api/v1/nodes/{node}")[1]["spec"]["unschedulable"] is True
    assert L.CHECKPOINT_REQUEST in get_job(kube, namespace, "train")["metadata"]["annotations"]

    def moved():
        now = [p for p in worker_pods(kube, namespace, "train") if not p["metadata"].get("deletionTimestamp")]
        return len(now) == 2 and all(p["spec"].get("nodeName") not in (None, node) for p in now) \
            and running(kube, namespace, "train", 2)
    wait_for("workers running on other nodes", moved)
    assert stoker("drain", "no-such-node").rc == 3


def test_doctor_passes_with_an_operator_and_a_reachable_bucket(stoker, cluster, kube, namespace, s3, bucket,
                                                               cli_kwok_pool, start_operator):
    start_operator()
    cluster.create_s3_secret(namespace, "creds")
    create_job(kube, namespace, gpu_job("ok", cli_kwok_pool, replicas=1, checkpoint={
        "uri": f"s3://{bucket}/ck", "intervalSteps": 10, "credentialsSecretRef": {"name": "creds"}}))
    r = stoker("doctor", "ok")
    assert r.rc == 0, r.out + r.err
    rows = {row["CHECK"]: row for row in table(r.out)}
    assert list(rows) == ["api", "auth", "crd", "operator", "job", "bucket"]
    assert {row["STATUS"] for row in rows.values()} == {"PASS"}
    assert "local operator process" in rows["operator"]["DETAIL"] and namespace in rows["operator"]["DETAIL"]
    assert "v1alpha1" in rows["crd"]["DETAIL"]
    doc = stoker("doctor", "ok", "-o", "json").json()
    assert doc["ok"] is True and [c["status"] for c in doc["checks"]] == ["PASS"] * 6


def test_doctor_fails_on_a_missing_bucket_bad_keys_and_no_operator(stoker, cluster, kube, namespace, s3,
                                                                   cli_kwok_pool, crd):
    cluster.create_s3_secret(namespace, "creds")
    kube.core.create_namespaced_secret(namespace, {"metadata": {"name": "bad"}, "stringData": {
        "AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong-secret",
        "AWS_ENDPOINT_URL_S3": cluster.s3_endpoint}})
    s3.create_bucket(Bucket=f"{namespace}"[:63])
    try:
        for name, uri, secret in (("nobucket", f"s3://{namespace}-missing"[:60], "creds"),
                                  ("badkeys", f"s3://{namespace}"[:63], "bad")):
            create_job(kube, namespace, gpu_job(name, cli_kwok_pool, replicas=1, checkpoint={
                "uri": uri, "intervalSteps": 10, "credentialsSecretRef": {"name": secret}}))
        # No operator runs for this namespace.
        doc = stoker("doctor", "nobucket", "-o", "json").json()
        checks = {c["check"]: c for c in doc["checks"]}
        assert checks["operator"]["status"] == "FAIL" and "stoker operator run" in checks["operator"]["detail"]
        assert checks["bucket"]["status"] == "FAIL" and "does not exist" in checks["bucket"]["detail"]
        assert stoker("doctor", "nobucket").rc == 1
        bad = {c["check"]: c for c in stoker("doctor", "badkeys", "-o", "json").json()["checks"]}
        assert bad["bucket"]["status"] == "FAIL" and "access denied" in bad["bucket"]["detail"]
        missing = {c["check"]: c for c in stoker("doctor", "ghost", "-o", "json").json()["checks"]}
        assert missing["job"]["status"] == "FAIL" and missing["bucket"]["status"] == "SKIP"
    finally:
        s3.delete_bucket(Bucket=f"{namespace}"[:63])


def test_kubectl_plugin_entry_point(cluster, namespace, job2):
    """`kubectl stoker get` finds the kubectl-stoker script next to the Python in use
    and passes KUBECONFIG through; exit codes survive the plugin wrapper."""
    import os
    import subprocess
    import sys

    bindir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bindir, "kubectl-stoker")):
        pytest.skip("kubectl-stoker is not installed in this environment (pip install -e .)")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "KUBECONFIG": str(cluster.kubeconfig),
           "NO_COLOR": "1"}
    kubectl = cluster.tool("kubectl")
    r = subprocess.run([kubectl, "stoker", "get", "-n", namespace, "-o", "json"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import json

    assert [i["name"] for i in json.loads(r.stdout)["items"]] == ["train"]
    r = subprocess.run([kubectl, "stoker", "describe", "nope", "-n", namespace], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 3 and "did you mean" not in r.stderr and 'TrainingJob "nope" not found' in r.stderr
