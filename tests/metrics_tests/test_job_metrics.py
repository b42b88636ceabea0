"""The operator's per-job metrics: status (+ heartbeats) -> samples, and the
collector Prometheus scrapes (stoker.operator.job_metrics)."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stoker.operator import job_metrics as J

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ts(offset_s: float) -> str:
    return (T0 + dt.timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def at(offset_s: float) -> float:
    return T0.timestamp() + offset_s


@dataclasses.dataclass
class Worker:  # the fields of stoker.common.heartbeat_server.WorkerStatus the metrics read
    rank: int
    step: int
    incarnation: int = 1
    phase: str = "TRAINING"
    last_seen: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)


class Source:
    def __init__(self, workers):
        self.list = list(workers)

    def workers(self, namespace, name):
        return [w for w in self.list]


def incident(detected: float, *, latency=2.0, ttr=None, kind="Restart", cause="WorkerKilled", incarnation=0):
    inc = {"time": ts(detected), "kind": kind, "cause": "infrastructure", "detectedCause": cause,
           "incarnation": incarnation, "detectionLatencySeconds": latency}
    if ttr is not None:
        inc["timeToRecoverSeconds"] = ttr
        inc["recoveredAt"] = ts(detected + ttr)
    return inc


def running_status(**over):
    st = {
        "phase": "Running", "incarnation": 1, "readyReplicas": 2, "desiredReplicas": 2, "startTime": ts(0),
        "metrics": {"step": 40, "loss": 1.5, "tokensPerSecond": 900.0, "updateTime": ts(95)},
        "lastCheckpoint": {"step": 40, "time": ts(90), "uri": "s3://b/j/step-00000040", "worldSize": 2},
        "workerHeartbeats": [{"rank": 0, "step": 40, "phase": "TRAINING", "lastHeartbeatTime": ts(98)},
                             {"rank": 1, "step": 40, "phase": "TRAINING", "lastHeartbeatTime": ts(97)}],
        "incidents": [incident(30, latency=2.0, ttr=8.0)],
        "restarts": {"infrastructure": 1, "total": 1},
    }
    st.update(over)
    return st


def by_name(samples):
    out = {}
    for fam, labels, value in samples:
        out.setdefault(fam, {})[tuple(sorted(labels.items()))] = value
    return out


def one(samples, fam):
    [v] = by_name(samples)[fam].values()
    return v


# --------------------------------------------------------------------------- pure: status -> samples

def test_a_running_job_exports_workers_step_checkpoint_and_goodput():
    facts = J.facts_from_status(running_status())
    s = J.job_samples("ns", "j", facts, at(100))
    got = by_name(s)
    assert got["stoker_job_workers"] == {
        (("namespace", "ns"), ("state", "desired"), ("trainingjob", "j")): 2.0,
        (("namespace", "ns"), ("state", "ready"), ("trainingjob", "j")): 2.0}
    # timestamps, not ages: right until the next event, whenever they are scraped
    assert got["stoker_worker_last_heartbeat_timestamp_seconds"] == {
        (("namespace", "ns"), ("rank", "0"), ("trainingjob", "j")): at(98),
        (("namespace", "ns"), ("rank", "1"), ("trainingjob", "j")): at(97)}
    assert one(s, "stoker_job_step") == 40 and one(s, "stoker_job_tokens_per_second") == 900.0
    assert one(s, "stoker_checkpoint_step") == 40 and one(s, "stoker_checkpoint_timestamp_seconds") == at(90)
    # one phase series per phase, 1 for the current one
    assert {dict(k)["phase"]: v for k, v in got["stoker_job_phase"].items()} == {
        "Created": 0, "Queued": 0, "Running": 1, "Restarting": 0, "Suspended": 0, "Succeeded": 0, "Failed": 0}
    assert {dict(k)["cause"]: v for k, v in got["stoker_trainingjob_restarts"].items()} == {
        "userError": 0, "infrastructure": 1, "preemption": 0}
    # 100 s since start, 2 s undetected + 8 s recovering
    assert one(s, "stoker_job_goodput_ratio") == pytest.approx(0.9)


def test_live_heartbeats_at_scrape_time_win_over_the_status_copy():
    facts = J.facts_from_status(running_status())
    s = J.job_samples("ns", "j", facts, at(100), live_heartbeats=[(0, at(99.5)), (1, at(99.75))])
    assert sorted(by_name(s)["stoker_worker_last_heartbeat_timestamp_seconds"].values()) == [at(99.5), at(99.75)]


def test_checkpoint_duration_and_bytes_come_from_the_ranks_report_of_that_save():
    workers = [Worker(0, 40, metrics={"checkpoint_step": 40, "checkpoint_ok": True, "checkpoint_duration_seconds": 1.5,
                                      "checkpoint_bytes": 4096, "last_committed_step": 40}),
               Worker(1, 40, metrics={"checkpoint_step": 40, "checkpoint_ok": True, "checkpoint_duration_seconds": 2.5,
                                      "checkpoint_bytes": 4096, "last_committed_step": 40}),
               Worker(0, 38, incarnation=0, metrics={"checkpoint_step": 40, "checkpoint_duration_seconds": 99.0})]
    s = J.job_samples("ns", "j", J.facts_from_status(running_status(), workers), at(100))
    assert one(s, "stoker_checkpoint_duration_seconds") == 2.5  # the slowest rank of this incarnation
    assert one(s, "stoker_checkpoint_bytes") == 4096


def test_a_save_that_did_not_commit_is_not_the_last_checkpoints_duration():
    workers = [Worker(0, 45, metrics={"checkpoint_step": 45, "checkpoint_ok": False, "checkpoint_duration_seconds": 30.0,
                                      "last_committed_step": 40})]
    s = by_name(J.job_samples("ns", "j", J.facts_from_status(running_status(), workers), at(100)))
    assert "stoker_checkpoint_duration_seconds" not in s and "stoker_checkpoint_bytes" not in s


def test_a_succeeded_job_keeps_its_totals_but_no_heartbeats_or_rates():
    st = running_status(phase="Succeeded", readyReplicas=0, completionTime=ts(200),
                        workerHeartbeats=[{"rank": 0, "step": 60, "phase": "FINISHED", "lastHeartbeatTime": ts(199)}])
    s = by_name(J.job_samples("ns", "j", J.facts_from_status(st), at(5000), steps_per_second=3.0))
    assert s["stoker_job_workers"][(("namespace", "ns"), ("state", "ready"), ("trainingjob", "j"))] == 0
    assert s["stoker_checkpoint_step"] and s["stoker_job_step"] and s["stoker_checkpoint_timestamp_seconds"]
    assert s["stoker_job_phase"][(("namespace", "ns"), ("phase", "Succeeded"), ("trainingjob", "j"))] == 1
    for fam in ("stoker_worker_last_heartbeat_timestamp_seconds",
                "stoker_job_steps_per_second", "stoker_job_tokens_per_second"):
        assert fam not in s, fam
    # goodput is frozen at completion: 10 s lost out of 200
    assert list(s["stoker_job_goodput_ratio"].values()) == [pytest.approx(0.95)]


def test_a_created_job_has_no_goodput_and_no_checkpoint_yet():
    st = {"phase": "Created", "incarnation": 0, "readyReplicas": 0, "desiredReplicas": 2}
    s = by_name(J.job_samples("ns", "j", J.facts_from_status(st), at(100)))
    assert set(s) == {"stoker_job_phase", "stoker_job_workers", "stoker_trainingjob_restarts",
                      "stoker_job_health_anomalies", "stoker_job_health_rollbacks"}
    assert s["stoker_job_health_anomalies"] == {(("namespace", "ns"), ("trainingjob", "j")): 0.0}


# --------------------------------------------------------------------------- goodput, step rate

def test_goodput_counts_an_open_incident_up_to_now_and_ignores_those_before_the_start():
    facts = J.facts_from_status(running_status(
        phase="Restarting", startTime=ts(100),
        incidents=[incident(50, ttr=5.0),                                   # before this start (suspend/resume)
                   incident(150, latency=4.0, kind="CheckpointFailed"),     # training went on
                   incident(180, latency=4.0)]))                            # still recovering
    assert J.goodput_ratio(facts, at(200)) == pytest.approx(1 - (4 + 20) / 100)


def test_goodput_is_clamped_to_0_and_undefined_before_the_start():
    facts = J.facts_from_status(running_status(incidents=[incident(1, latency=500.0, ttr=10.0)]))
    assert J.goodput_ratio(facts, at(100)) == 0.0
    assert J.goodput_ratio(J.facts_from_status({"phase": "Created"}), at(100)) is None
    assert J.goodput_ratio(facts, at(0)) is None


def test_step_rate_over_the_last_minute_and_falling_to_zero_when_stalled():
    hist = [(at(0), 0), (at(30), 30), (at(60), 60), (at(90), 90)]
    assert J.step_rate(hist, at(90)) == pytest.approx(60 / 60)         # anchored at t=30
    assert J.step_rate(hist + [(at(200), 90)], at(200)) == pytest.approx(0.0)
    assert J.step_rate(hist[:1], at(10)) is None


# --------------------------------------------------------------------------- recovery histogram de-duplication

def test_only_recovered_unseen_incidents_after_process_start_are_observed():
    incs = [incident(10, ttr=5.0), incident(100, ttr=7.0, cause="NodeLost"), incident(200),
            incident(300, ttr=1.0, kind="CheckpointFailed")]
    fresh = J.recovered_incidents(incs, seen=(), not_before=at(50))
    assert [(c, t) for _, c, t in fresh] == [("NodeLost", 7.0)]
    assert J.recovered_incidents(incs, seen=[k for k, _, _ in fresh], not_before=at(50)) == []


# --------------------------------------------------------------------------- the collector, as Prometheus sees it

def scrape(collector) -> dict:
    reg = CollectorRegistry()
    reg.register(collector)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(scraped, name, **labels):
    [v] = [v for lab, v in scraped[name] if labels.items() <= lab.items()]
    return v


def test_collector_scrape_reads_live_heartbeats_and_rates_at_scrape_time():
    now = [at(100)]
    c = J.JobMetricsCollector(clock=lambda: now[0], started_at=at(0))
    src = Source([Worker(0, 40, last_seen=at(99)), Worker(1, 41, last_seen=at(98))])
    c.observe("ns", "j", running_status(), src)
    s = scrape(c)
    assert value(s, "stoker_worker_last_heartbeat_timestamp_seconds", rank="0") == at(99)
    assert value(s, "stoker_checkpoint_timestamp_seconds", trainingjob="j", namespace="ns") == at(90)
    assert value(s, "stoker_trainingjob_restarts_total", cause="infrastructure") == 1
    now[0] = at(110)
    src.list = [Worker(0, 50, last_seen=at(109.5)), Worker(1, 50, last_seen=at(109.5))]
    s = scrape(c)
    assert value(s, "stoker_worker_last_heartbeat_timestamp_seconds", rank="1") == at(109.5)
    assert value(s, "stoker_checkpoint_timestamp_seconds") == at(90)
    assert value(s, "stoker_job_steps_per_second") == pytest.approx((50 - 41) / 10)


def test_collector_counts_each_recovery_once_across_passes_and_forgets_deleted_jobs():
    c = J.JobMetricsCollector(clock=lambda: at(100), started_at=at(0))
    st = running_status()
    for _ in range(3):  # every pass re-reads the same incident
        c.observe("ns", "j", st)
    c.observe("ns", "k", running_status(incidents=[incident(40, ttr=3.0, cause="NodeLost")]))
    s = scrape(c)
    assert value(s, "stoker_recovery_seconds_count", cause="WorkerKilled") == 1
    assert value(s, "stoker_recovery_seconds_sum", cause="WorkerKilled") == 8.0
    assert value(s, "stoker_recovery_seconds_count", cause="NodeLost") == 1
    assert {lab["trainingjob"] for lab, _ in s["stoker_job_workers"]} == {"j", "k"}
    c.forget("ns", "k")
    s = scrape(c)
    assert {lab["trainingjob"] for lab, _ in s["stoker_job_workers"]} == {"j"}


def test_a_restarted_operator_does_not_count_recoveries_its_predecessor_saw():
    c = J.JobMetricsCollector(clock=lambda: at(500), started_at=at(400))
    c.observe("ns", "j", running_status(incidents=[incident(30, ttr=8.0), incident(420, ttr=4.0)]))
    s = scrape(c)
    assert value(s, "stoker_recovery_seconds_count", cause="WorkerKilled") == 1
    assert value(s, "stoker_recovery_seconds_sum", cause="WorkerKilled") == 4.0


def test_a_broken_heartbeat_source_does_not_break_the_scrape():
    class Broken:
        def workers(self, namespace, name):
            raise RuntimeError("registry gone")

    c = J.JobMetricsCollector(clock=lambda: at(100), started_at=at(0))
    c.observe("ns", "j", running_status(), Broken())
    s = scrape(c)
    assert value(s, "stoker_job_step") == 40
    assert value(s, "stoker_worker_last_heartbeat_timestamp_seconds", rank="0") == at(98)  # status' copy


def test_every_family_is_described_even_without_jobs():
    names = {f.name for f in J.JobMetricsCollector().collect()}
    assert set(J.FAMILIES) | {"stoker_recovery_seconds"} <= names


def test_the_training_picture_in_status_is_exported_as_gauges():
    st = {"phase": "Running", "incarnation": 0, "metrics": {"step": 7, "loss": 3.9, "gradNorm": 0.58,
                                                            "learningRate": 3e-4, "dataWaitFraction": 0.02,
                                                            "collectiveWaitFraction": 0.3, "gpuUtilization": 0.9,
                                                            "gpuMemoryBytes": 2.0e9},
          "health": {"anomalies": 2, "rollbacks": 1}}
    s = by_name(J.job_samples("ns", "j", J.facts_from_status(st), at(100)))
    lab = (("namespace", "ns"), ("trainingjob", "j"))
    assert s["stoker_job_loss"] == {lab: 3.9} and s["stoker_job_grad_norm"] == {lab: 0.58}
    assert s["stoker_job_learning_rate"] == {lab: 3e-4} and s["stoker_job_data_wait_ratio"] == {lab: 0.02}
    assert s["stoker_job_collective_wait_ratio"] == {lab: 0.3} and s["stoker_job_gpu_utilization_ratio"] == {lab: 0.9}
    assert s["stoker_job_gpu_memory_bytes"] == {lab: 2.0e9}
    assert "stoker_job_validation_loss" not in s   # not validated yet: no series, not a 0
    assert s["stoker_job_health_anomalies"] == {lab: 2.0} and s["stoker_job_health_rollbacks"] == {lab: 1.0}
