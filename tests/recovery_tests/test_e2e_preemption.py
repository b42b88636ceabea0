"""End to end: a worker pod is preempted for real by kube-scheduler (a pod of a
higher PriorityClass needs the worker's node's only nvidia.com/gpu), with the
pod's grace period. kube-scheduler sets the DisruptionTarget condition
(PreemptionByScheduler) and deletes the victim with its
terminationGracePeriodSeconds; the node agent sends SIGTERM to the pod's main
process (the launcher, which holds it) and SIGKILLs after the grace period, like
the kubelet. The operator sees the outside deletion, asks every worker to
checkpoint and stop, and resumes the job as a new incarnation from that
checkpoint on the other nodes: no step is computed twice, nothing is counted
against maxRestarts, and the final parameters equal an undisturbed run's."""
from __future__ import annotations

import json
import sys
import uuid

import pytest

from tests.operator_tests.conftest import wait_for, worker_pods

from . import faults as F
from .conftest import POOL_LABEL, reference_summary, trainer_config
from .e2e import metrics_rows, status, summary_of

pytestmark = [pytest.mark.cluster, pytest.mark.torch, pytest.mark.slow]

GPU = "nvidia.com/gpu"


@pytest.fixture
def gpu_nodes(cluster):
    """Three process nodes with one nvidia.com/gpu each, labelled for this test only."""
    tag = uuid.uuid4().hex[:6]
    names = [f"pre-{tag}-{i}" for i in range(3)]
    try:
        for name in names:
            cluster.start_process_node(name, gpus=1, labels={POOL_LABEL: f"pre-{tag}"})
        yield {POOL_LABEL: f"pre-{tag}"}, names
    finally:
        for name in names:
            cluster.stop_process_node(name)
        cluster.delete_nodes(names)


@pytest.fixture
def priority_class(cluster):
    name = f"stoker-test-preemptor-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
            "value": 1000000, "preemptionPolicy": "PreemptLowerPriority",
            "description": "test_e2e_preemption: preempts the training job worker"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    yield name
    cluster.kubectl("delete", "priorityclass", name, "--ignore-not-found", check=False)


def preemptor(name: str, node: str, priority_class: str) -> dict:
    """A pod that fits only on `node`, on that node's one GPU, with a higher priority."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "priorityClassName": priority_class, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
            "containers": [{"name": "main", "image": "local/python",
                            "command": [sys.executable, "-c", "import time; time.sleep(3600)"],
                            "resources": {"limits": {GPU: "1"}, "requests": {GPU: "1"}}}],
        },
    }


def test_a_preempted_worker_drains_with_a_checkpoint_and_the_job_resumes_without_recomputing_a_step(
        cluster, kube, namespace, bucket, gpu_nodes, priority_class, trainer_run, tmp_path):
    selector, _ = gpu_nodes
    steps = 200
    cfg = trainer_config(steps)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = tmp_path / "journal"

    def edit(body):
        tspec = body["spec"]["template"]["spec"]
        tspec["terminationGracePeriodSeconds"] = 30  # room for the drain (the launcher holds SIGTERM for 25 s at most)
        tspec["containers"][0]["resources"] = {"limits": {GPU: "1"}, "requests": {GPU: "1"}}

    run = trainer_run(name="pre", cfg=cfg, node_selector=selector, journal_dir=jdir, edit=edit)
    out, diag = run.out, run.diag
    wait_for("training past step 15", lambda: any(r["step"] >= 15 for r in metrics_rows(out)), timeout=300,
             interval=0.05, on_timeout=diag)
    victim = "pre-worker-1-0"
    node = next(p["spec"]["nodeName"] for p in worker_pods(kube, namespace, "pre") if p["metadata"]["name"] == victim)
    kube.core.create_namespaced_pod(namespace, preemptor("preemptor", node, priority_class))

    # kube-scheduler preempts the worker: DisruptionTarget, then a delete with the pod's grace period
    def preempted():
        for p in worker_pods(kube, namespace, "pre"):
            if p["metadata"]["name"] == victim and p["metadata"].get("deletionTimestamp"):
                return p
        return None
    victim_pod = wait_for("the worker preempted", preempted, timeout=60, interval=0.05, on_timeout=diag)
    assert victim_pod["metadata"]["deletionGracePeriodSeconds"] == 30
    drained = wait_for("the drained incarnation's summary",
                       lambda: (s := summary_of(out)) and s.get("stopped_early") and s, timeout=120, on_timeout=diag)
    stop_step = drained["step"]
    assert 15 <= stop_step < steps
    wait_for("job Succeeded", lambda: status(kube, namespace, "pre").get("phase") == "Succeeded", timeout=400,
             on_timeout=diag)
    final = summary_of(out)
    assert final["step"] == steps and final["resumed_from"] == stop_step
    assert final["checksum"] == ref["checksum"]
    # every step computed exactly once (rank 0's append-only journal; the metrics file is
    # trimmed on resume): the new incarnation resumed at the drain checkpoint
    assert F.computed_steps(jdir) == list(range(1, steps + 1))
    assert F.resumed_steps(jdir) == [stop_step]
    st = status(kube, namespace, "pre")
    assert st["incarnation"] == 1
    assert st["restarts"] == {"userError": 0, "infrastructure": 0, "preemption": 1, "total": 1}
    [inc] = [i for i in st["incidents"] if i["kind"] == "Restart"]
    assert (inc["detectedCause"], inc["cause"], inc["pod"], inc["node"], inc["drained"]) == (
        "Preempted", "preemption", victim, node, True)
    assert "PreemptionByScheduler" in inc["message"] and "recoveredAt" in inc
    events = cluster.kubectl("describe", "tj", "pre", "-n", namespace).stdout.split("Events:")[-1]
    assert "Draining" in events and "Drained" in events
    # the preemptor got the GPU the worker had
    wait_for("the preemptor running", lambda: (kube.core.read_namespaced_pod("preemptor", namespace).status.phase
                                               == "Running"), timeout=60, on_timeout=diag)
