"""Failure/TTL policies, status helpers, config and the CRD's static shape."""
from __future__ import annotations

import datetime as dt
import pathlib

import yaml

from stoker.common import labels as L
from stoker.operator import config, policy_failure
from stoker.operator.controller import status_patch
from stoker.operator.jobspec import job_view
from stoker.operator.status import set_condition

from .helpers import NOW, job_body

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "trainingjobs.stoker.dev.yaml"


def test_backoff_doubles_and_is_capped():
    job = job_view(job_body(failurePolicy={"backoffSeconds": 10}))
    assert [policy_failure.backoff_seconds(job, {"total": n}) for n in (1, 2, 3)] == [10, 20, 40]
    assert policy_failure.backoff_seconds(job, {"total": 30}) == policy_failure.MAX_BACKOFF_S


def test_set_condition_moves_transition_time_only_on_flip():
    c = set_condition([], "Running", True, "A", "m", NOW)
    later = NOW + dt.timedelta(seconds=5)
    c2 = set_condition(c, "Running", True, "B", "m2", later)
    assert c2[0]["lastTransitionTime"] == c[0]["lastTransitionTime"] and c2[0]["reason"] == "B"
    c3 = set_condition(c2, "Running", False, "C", "m3", later)
    assert c3[0]["lastTransitionTime"] != c[0]["lastTransitionTime"]


def test_status_patch_removes_dropped_keys():
    assert status_patch({"a": 1, "b": 2}, {"a": 1, "c": 3}) == {"b": None, "c": 3}


def test_config_round_trips_through_the_environment():
    cfg = config.Config(namespaces=("a", "b"), rendezvous_port=1234, resync_seconds=1.5, peering="p",
                        rendezvous_advertise_address="10.1.2.3")
    assert config.load(config.to_env(cfg)) == cfg


def test_elastic_min_defaults_to_one_fixed_min_to_replicas():
    assert job_view(job_body(replicas=3, maxReplicas=5)).min_replicas == 1
    fixed = job_view(job_body(replicas=3))
    assert (fixed.min_replicas, fixed.max_replicas) == (3, 3)


def test_crd_names_and_subresources_match_the_shared_contract():
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{L.PLURAL}.{L.GROUP}"
    assert spec["group"] == L.GROUP and spec["names"]["kind"] == L.KIND and "tj" in spec["names"]["shortNames"]
    v = spec["versions"][0]
    assert v["name"] == L.VERSION
    assert v["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                                          "labelSelectorPath": ".status.selector"}
    cols = [c["name"] for c in v["additionalPrinterColumns"]]
    assert cols[:6] == ["Phase", "Workers", "Step", "Restarts", "Checkpointed", "Age"]
    schema = v["schema"]["openAPIV3Schema"]
    assert "x-kubernetes-preserve-unknown-fields" not in schema
    assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"]["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in schema["properties"]["status"]


def test_a_job_its_trainers_ended_early_on_purpose_succeeds_with_their_reason():
    from types import SimpleNamespace

    from stoker.operator.policy_success import ended_early

    said = "TokenBudgetReached: trained on 1920 tokens (train.max_tokens=1900)"
    workers = [SimpleNamespace(incarnation=1, finish_reason=""), SimpleNamespace(incarnation=1, finish_reason=said)]
    assert ended_early(workers, 1) == ("TokenBudgetReached", said)
    assert ended_early(workers, 2) is None   # another incarnation's words
    assert ended_early([SimpleNamespace(incarnation=0, finish_reason="done early")], 0) == \
        ("EndedEarly", "done early")
