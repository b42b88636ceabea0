"""Issue 12's node faults on real nodes (kubelet + containerd), with the Helm-installed operator (its own
4-node cluster, the operator pinned to real-node-0; each worker asks for both GPUs of a node, so one pod
per node):

- a partitioned node that comes back is fenced: the node of rank 0 (the checkpoint coordinator, holding
  back its commit of step 20) loses its one link to the cluster. Its kubelet, containerd and pods run on
  but reach nothing. The job recovers on the other nodes as incarnation 1. When the link comes back (the
  kubelet kept stopped meanwhile, so the old pods live on), the old coordinator goes to commit step 20 and
  is refused by the checkpoint fence: the checkpoints do not change, the job ends bit-identical;
- a hot spare takes a lost node's place: a node of a worker is stopped (kubelet, containerd and
  containers gone) at a random step; the other worker restarts in place, the spare takes the lost rank,
  both restore from memory (the lost rank's snapshot from its copy on the survivor's pod), no new
  incarnation, no new pod for the survivors, the job ends bit-identical.

Faults come at random steps (seeded; the seed is printed), except the partition, which comes when step
20's shards are stored (the moment that makes an unfenced commit possible). No timing is asserted
(bench/bench_recovery_real.py measures)."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.operator_tests.conftest import wait_for
from tests.realnodes_tests import operator_helm as H
from tests.realnodes_tests.test_recovery_real import (  # noqa: F401 - `installed` is a fixture
    built_in_job, installed, job_status, shared_dir, wait_succeeded, worker_pods)
from tests.recovery_tests import faults as F
from tests.recovery_tests.conftest import reference_summary
from tests.recovery_tests.e2e import acting_incidents, assert_restored_from_memory
from tests.recovery_tests.test_e2e_fast_detection import body
from tests.recovery_tests.test_e2e_recovery import fault_rng
from tests.recovery_tests.trainer_configs import trainer_config
from stoker.worker import journal

pytestmark = [pytest.mark.realnodes, pytest.mark.cluster, pytest.mark.slow, pytest.mark.torch]

REAL_NODES = 4          # the cluster fixture's size (conftest.real_cluster)
OPERATOR_NODE = "real-node-0"
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module", autouse=True)
def dns_on_the_operators_node(real_cluster):
    """CoreDNS (one replica here) on the node that is never lost or cut, as the operator."""
    from bench.chaos_real import pin_cluster_dns
    pin_cluster_dns(real_cluster)


def whole_node(job: dict) -> None:
    """Each pod asks for both GPUs of a node: one pod per node."""
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {GPU: 2}}


def heartbeats(c, ns: str, name: str) -> list[dict]:
    return job_status(c, ns, name).get("workerHeartbeats") or []


def objects(s3, bucket: str) -> dict[str, str]:
    return {o["Key"]: o["ETag"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def summary_from_logs(c, ns: str, name: str) -> dict:
    logs = "".join(c.kubectl("logs", "-n", ns, p["metadata"]["name"], check=False).stdout
                   for p in worker_pods(c, ns, name))
    return next(json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"checksum"' in line)


def test_a_partitioned_node_that_comes_back_is_fenced_it_commits_and_joins_nothing(real_cluster, installed, tmp_path):
    c, ns, nodes = real_cluster, installed["ns"], real_cluster.real_nodes()
    cfg = trainer_config(80, slow_checkpoint_at_step=20, slow_checkpoint_seconds=45)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = shared_dir(tmp_path / "journal")
    H.apply_config_map(c, ns, "split-config", {"config.json": json.dumps(H.in_pod_config(cfg))})
    bucket = H.make_bucket(c)
    job = H.trainer_job("split", installed["ref"], bucket, jdir)
    whole_node(job)
    job["spec"]["checkpoint"]["keep"] = 100     # step 20's folder stays: an unfenced commit would go through
    spec = job["spec"]["template"]["spec"]
    spec["affinity"] = {**spec["affinity"], "nodeAffinity": {   # rank 0's node is never the operator's
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [OPERATOR_NODE]}]}]}}}
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))
    s3 = H.s3_client(c)
    diag = lambda: json.dumps(job_status(c, ns, "split"), indent=1) + c.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout  # noqa

    wait_for("step 20's shards stored", lambda: "split/step-00000020/.metadata" in objects(s3, bucket), 300, 0.2,
             on_timeout=diag)
    [lead] = [b for b in heartbeats(c, ns, "split") if b["rank"] == 0]
    node = next(n for n in nodes.known() if n.name == lead["node"])
    kubelet = nodes.pid(node, "kubelet")
    cut_at = time.time()
    print(f"partition {node.name} (rank 0: {lead['pod']}) at step 20's commit")
    nodes.partition(node)
    try:
        wait_succeeded(c, ns, "split", timeout=400)   # recovered on the other nodes, incarnation 1
        done = objects(s3, bucket)
        # the link comes back; the node's kubelet is held stopped meanwhile, so its old pods run on (as
        # when a kubelet is slow to catch up) until the old coordinator's save of step 20 has ended
        os.kill(kubelet, signal.SIGSTOP)
        nodes.partition(node, cut=False)
        healed_at = time.time()

        # its trainer's log, as containerd writes it on the node (the pod is gone from the API)
        [log] = (node.dir / "pod-logs").glob(f"{ns}_{lead['pod']}_*/trainer/0.log")

        def old_save_ended():   # refused, or (unfenced) the checkpoints changed
            refused = [line for line in log.read_text().splitlines() if "checkpoint.not_committed step=20" in line]
            return refused or (objects(s3, bucket) != done and ["the checkpoints changed"])
        ended = wait_for("the old coordinator's save of step 20 ended", old_save_ended, 180, 0.2, on_timeout=diag)
    finally:
        nodes.partition(node, cut=False)
        os.kill(kubelet, signal.SIGCONT)
    print(f"healed {healed_at - cut_at:.1f}s after the cut; the old coordinator: {ended}")
    assert objects(s3, bucket) == done, "the checkpoints changed after the old worker came back"
    assert "fenced: incarnation 0 was superseded by incarnation 1" in ended[0], ended
    st = job_status(c, ns, "split")
    assert st["incarnation"] == 1 and st["phase"] == "Succeeded", st
    assert body(s3, bucket, "split/FENCE") == {"incarnation": 1}
    assert body(s3, bucket, "split/step-00000020/stoker.json")["incarnation"] == 1   # committed by the replacement
    assert not [r for r in journal.read(jdir) if r["event"] == "committed" and r["incarnation"] == 0
                and r["t"] >= cut_at]
    assert {b["pod"] for b in heartbeats(c, ns, "split")} <= {"split-worker-0-1", "split-worker-1-1"}
    summary = summary_from_logs(c, ns, "split")
    assert summary["step"] == 80 and summary["checksum"] == ref["checksum"] and summary["resumed_from"] is not None


def test_a_hot_spare_takes_a_lost_nodes_place_and_the_lost_rank_comes_back_from_its_peer_copy(
        real_cluster, installed, tmp_path):
    c, ns, nodes = real_cluster, installed["ns"], real_cluster.real_nodes()
    rng = fault_rng()
    job, jdir, ref = built_in_job(c, ns, installed["ref"], "hot", tmp_path)
    whole_node(job)
    job["spec"]["spares"] = 1
    job["spec"]["checkpoint"]["memoryIntervalSteps"] = 1
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))
    incarnation = lambda: int(job_status(c, ns, "hot").get("incarnation", 0))  # noqa: E731
    diag = lambda: json.dumps(job_status(c, ns, "hot"), indent=1) + c.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout  # noqa

    beats = wait_for("heartbeats of 2 ranks", lambda: len({b["pod"] for b in heartbeats(c, ns, "hot")}) == 2
                     and heartbeats(c, ns, "hot"), 300, 0.2, on_timeout=diag)
    before = {p["metadata"]["name"]: p for p in worker_pods(c, ns, "hot")}
    assert len(before) == 3 and len({p["spec"]["nodeName"] for p in before.values()}) == 3, diag()
    workers = {b["pod"]: b for b in beats}
    [spare] = set(before) - set(workers)     # the pod with no trainer: it waits outside the round
    moment = F.at_random_moment(rng, jdir, incarnation, min_steps=8, max_steps=40, timeout=300)
    # the worker to lose: rank 1 unless its node is the operator's
    victim = sorted(workers, key=lambda p: (before[p]["spec"]["nodeName"] == OPERATOR_NODE, -workers[p]["rank"]))[0]
    lost = before[victim]["spec"]["nodeName"]
    assert lost != OPERATOR_NODE, diag()
    t0 = time.time()
    print(f"fault: stop {lost} (running {victim}, rank {workers[victim]['rank']}; spare {spare}) at", moment)
    nodes.stop_node(next(n for n in nodes.known() if n.name == lost), sig=signal.SIGKILL)

    inc = wait_for("the Replace incident", lambda: next(
        (i for i in job_status(c, ns, "hot").get("incidents") or [] if i["kind"] == "Replace"), None), 180, 0.2,
        on_timeout=diag)
    print("incident:", json.dumps(inc))
    assert inc["detectedCause"] == "NodeLost" and inc["node"] == lost and inc["pod"] == victim, inc
    assert inc["spare"] and inc["inPlace"] and inc["cause"] == "infrastructure", inc
    wait_succeeded(c, ns, "hot")
    summary = summary_from_logs(c, ns, "hot")
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"], (summary, ref)
    # both ranks of the new round restored the same step from memory, not from S3: the lost rank's
    # snapshot from the copy on the survivor's pod
    _, restored, committed = assert_restored_from_memory(jdir, t0)
    assert {r["pod"] for r in restored} == {spare, *(set(workers) - {victim})}, restored
    st = job_status(c, ns, "hot")
    assert st["incarnation"] == 0 and st["restarts"]["userError"] == 0, st
    assert [i["kind"] for i in acting_incidents(st, committed)] == ["Replace"], st["incidents"]
    after = {p["metadata"]["name"]: p for p in worker_pods(c, ns, "hot")}
    for name in set(before) - {victim}:
        assert after[name]["metadata"]["uid"] == before[name]["metadata"]["uid"], name
