"""Two operator replicas with the same --peering never both act: the higher
priority one reconciles; when it dies, the other takes over."""
from __future__ import annotations

import pathlib

import pytest

from .conftest import (active_label, create_job, get_job, job_manifest, patch_job, stand_in_pod, wait_for,
                       worker_pods)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PEERING_CRDS = pathlib.Path(__file__).resolve().parents[2] / "crds" / "kopf-peering.yaml"


def created_by(op) -> list[str]:
    import json

    names = []
    for line in op.log_path.read_text().splitlines():
        if '"created worker pod"' in line:
            names.append(json.loads(line)["pod"])
    return names


def test_only_the_leader_acts_and_the_follower_takes_over(cluster, kube, namespace, kwok_pool, start_operator):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRDS))
    cluster.wait_crd_established("kopfpeerings.kopf.dev")
    env = {"STOKER_OPERATOR_PEERING": "stoker", "STOKER_OPERATOR_PEERING_LIFETIME_SECONDS": "4"}
    follower = start_operator(extra_env={**env, "STOKER_OPERATOR_PEERING_PRIORITY": "100",
                                         **stand_in_pod(kube, namespace, "op-follower")})
    leader = start_operator(extra_env={**env, "STOKER_OPERATOR_PEERING_PRIORITY": "200",
                                       **stand_in_pod(kube, namespace, "op-leader")})
    # Only the replica that acts is labelled for the Service (heartbeats go there alone).
    wait_for("the leader's pod labelled active, the follower's not",
             lambda: (active_label(kube, namespace, "op-leader"), active_label(kube, namespace, "op-follower"))
             == ("true", "false"), timeout=60, on_timeout=leader.tail)
    # The follower pauses once it sees the higher-priority peer.
    # (generous: under load the peer shows up only with kopf's next keep-alive)
    wait_for("follower paused", lambda: "Pausing operations" in follower.log_path.read_text(), timeout=90,
             on_timeout=follower.tail)
    body = job_manifest("peer", ["python", "train.py"], replicas=2, minReplicas=1, maxReplicas=3,
                        node_selector=kwok_pool)
    create_job(kube, namespace, body)
    wait_for("Running", lambda: get_job(kube, namespace, "peer").get("status", {}).get("phase") == "Running",
             on_timeout=leader.tail)
    assert sorted(created_by(leader)) == ["peer-worker-0-0", "peer-worker-1-0"]
    assert created_by(follower) == []

    leader.kill()
    patch_job(kube, namespace, "peer", {"spec": {"replicas": 3}})
    wait_for("the follower creates the third worker", lambda: "peer-worker-2-0" in created_by(follower),
             timeout=60, on_timeout=follower.tail)
    wait_for("3 workers", lambda: len(worker_pods(kube, namespace, "peer")) == 3)
    # (the killed leader's pod keeps its label here; a real one restarts and says "false" first)
    wait_for("the follower's pod labelled active", lambda: active_label(kube, namespace, "op-follower") == "true",
             timeout=30, on_timeout=follower.tail)   # its 2 s check may come after kopf resumed it
