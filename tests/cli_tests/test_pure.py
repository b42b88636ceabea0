"""The pure parts of the on-call CLI: tables, ages, colour rules, near names,
job facts (get/describe/top rows), scale validation, checkpoint progress,
drain plans, doctor's exit code."""
from __future__ import annotations

import datetime as dt
import io
import json

import pytest
import yaml

from stoker.cli import doctor, facts, jobs, output
from stoker.common import labels as L
from stoker.cli.main import main

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ts(seconds_ago: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name="train", status=None, **spec) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": ts(3600)},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "trainer", "image": "img", "command": ["python", "train.py"]}]}}, **spec},
            "status": status or {}}


def pod(name, index, node="n1", ready=True, incarnation=0, deleting=False, phase="Running", restarts=0):
    p = {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": ts(60),
                      "labels": {"stoker.dev/job-name": "train", "stoker.dev/replica-index": str(index),
                                 "stoker.dev/incarnation": str(incarnation)}},
         "spec": {"nodeName": node, "containers": [{"name": "trainer"}]},
         "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "containerStatuses": [{"name": "trainer", "restartCount": restarts, "state": {"running": {}}}]}}
    if deleting:
        p["metadata"]["deletionTimestamp"] = ts(1)
    return p


RUNNING = {"phase": "Running", "readyReplicas": 2, "desiredReplicas": 2, "incarnation": 1,
           "metrics": {"step": 120, "tokensPerSecond": 12345.0, "loss": 2.5, "updateTime": ts(5)},
           "lastCheckpoint": {"step": 100, "time": ts(90), "uri": "s3://b/ck/step-00000100"},
           "restarts": {"total": 1, "infrastructure": 1}}


# --------------------------------------------------------------------- output
def test_table_aligns_columns_and_ignores_colour_codes():
    red = output.paint("FAILED", "red", True)
    text = output.table(["NAME", "HEALTH", "AGE"], [["a", red, "5s"], ["longer-name", "OK", "10m"]])
    lines = [output._ANSI.sub("", line) for line in text.splitlines()]
    assert lines == ["NAME          HEALTH   AGE",
                     "a             FAILED   5s",
                     "longer-name   OK       10m"]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_colour_only_on_a_tty_and_never_with_no_color():
    assert output.use_colour(_Stream(True), env={"TERM": "xterm"})
    assert not output.use_colour(_Stream(False), env={"TERM": "xterm"})
    assert not output.use_colour(_Stream(True), env={"TERM": "xterm", "NO_COLOR": ""})
    assert not output.use_colour(_Stream(True), env={"TERM": "dumb"})
    assert output.paint("x", "red", False) == "x"


@pytest.mark.parametrize("seconds,text", [(None, "<unknown>"), (0, "0s"), (119, "119s"), (150, "2m30s"),
                                          (600, "10m"), (3 * 3600 + 600, "3h10m"), (30 * 3600, "30h"),
                                          (3 * 86400 + 3600, "3d1h"), (40 * 86400, "40d")])
def test_human_duration_reads_like_kubectl(seconds, text):
    assert output.human_duration(seconds) == text


@pytest.mark.parametrize("value,text", [(None, "-"), (950, "950"), (12345, "12.3k"), (4.56e6, "4.56M"),
                                        (250000, "250k")])
def test_human_rate(value, text):
    assert output.human_rate(value) == text


def test_near_names_finds_typos_and_substrings():
    names = ["llama-8b", "llama-70b", "gpt-small", "bert"]
    assert output_first(facts.near_names("lama-8b", names)) == "llama-8b"
    assert "gpt-small" in facts.near_names("gpt", names)
    assert facts.near_names("zzz", names) == []


def output_first(xs):
    return xs[0] if xs else None


# ----------------------------------------------------------------------- facts
def test_summary_of_a_running_job():
    s = facts.job_summary(job(status=RUNNING), [pod("train-worker-0-1", 0), pod("train-worker-1-1", 1)], NOW)
    assert (s["phase"], s["workers"], s["step"], s["restarts"], s["health"]) == \
        ("Running", {"ready": 2, "desired": 2}, 120, 1, "OK")
    assert s["lastCheckpoint"]["step"] == 100 and s["lastCheckpoint"]["ageSeconds"] == 90
    assert s["ageSeconds"] == 3600


def test_health_names_what_is_wrong():
    def h(status, **spec):
        return facts.job_summary(job(status=status, **spec), [], NOW)["health"]

    assert h({**RUNNING, "readyReplicas": 1}) == "DEGRADED"
    assert h({**RUNNING, "metrics": {"step": 5, "updateTime": ts(400)}}) == "STALLED"
    assert h({**RUNNING, "metrics": {"step": 5, "updateTime": ts(400)}},
             failurePolicy={"progressTimeoutSeconds": 600}) == "OK"
    assert h({**RUNNING, "incidents": [{"time": ts(10), "kind": "Replace", "message": "node lost"}]}) == "RECOVERING"
    assert h({**RUNNING, "incidents": [{"time": ts(10), "kind": "Replace", "recoveredAt": ts(2)}]}) == "OK"
    assert h({"phase": "Failed", "reason": "BackoffLimitExceeded"}) == "FAILED"
    assert h({"phase": "Suspended"}) == "SUSPENDED"
    assert h({}) == "PENDING"


def test_current_workers_prefer_the_newest_incarnation_and_live_pods():
    pods = [pod("w-0-0", 0, incarnation=0), pod("w-0-1", 0, incarnation=1),
            pod("w-1-1-old", 1, incarnation=1, deleting=True), pod("w-1-1", 1, incarnation=1)]
    assert [p["metadata"]["name"] for p in facts.current_workers(pods)] == ["w-0-1", "w-1-1"]


def test_worker_rows_take_heartbeats_from_a_per_rank_status_list_when_present():
    st = {**RUNNING, "workers": [{"rank": 1, "step": 118, "lastHeartbeatTime": ts(3)}]}
    rows = facts.worker_rows(job(status=st), [pod("w-0", 0), pod("w-1", 1, node="n2", restarts=2)], NOW)
    assert [(r["rank"], r["node"], r["step"], r["heartbeatAgeSeconds"], r["restarts"]) for r in rows] == \
        [(0, "n1", None, None, 0), (1, "n2", 118, 3.0, 2)]
    # the CRD's own string form ("2/2") is not a list: no heartbeat facts, no error
    assert facts.worker_rows(job(status={**RUNNING, "workers": "2/2"}), [pod("w-0", 0)], NOW)[0]["step"] is None


def test_scale_is_checked_against_the_elastic_range():
    elastic = job(minReplicas=2, maxReplicas=4)
    assert facts.scale_error(elastic, 3) is None
    assert "spec.maxReplicas=4" in facts.scale_error(elastic, 5)
    assert "spec.minReplicas=2" in facts.scale_error(elastic, 1)
    assert "not elastic" in facts.scale_error(job(), 3)
    assert facts.scale_error(job(), 2) is None       # unchanged is fine
    assert "at least 1" in facts.scale_error(elastic, 0)


def test_checkpoint_is_done_only_past_the_request():
    before = facts.checkpoint_baseline(job(status=RUNNING))
    assert before == {"checkpointStep": 100, "checkpointTime": ts(90), "requestStep": 120}
    later = lambda step, t: job(status={**RUNNING, "lastCheckpoint": {"step": step, "time": t}})  # noqa: E731
    assert not facts.checkpoint_done(before, job(status=RUNNING))
    assert not facts.checkpoint_done(before, later(110, ts(1)))   # newer, but before the requested step
    assert facts.checkpoint_done(before, later(120, ts(1)))
    assert facts.checkpoint_done(before, later(125, ts(1)))
    first = facts.checkpoint_baseline(job(status={"phase": "Running"}))
    assert facts.checkpoint_done(first, later(3, ts(1)))


def test_drain_plan_groups_workers_by_job_and_leaves_other_pods():
    pods = [pod("train-worker-0-0", 0, node="n1"), pod("train-worker-1-0", 1, node="n2"),
            pod("done", 0, node="n1", phase="Succeeded"),
            {"metadata": {"name": "web", "namespace": "ns", "labels": {}}, "spec": {"nodeName": "n1"}, "status": {}}]
    assert facts.drain_plan("n1", pods) == {
        "node": "n1", "jobs": [{"namespace": "ns", "job": "train", "pods": ["train-worker-0-0"]}],
        "otherPods": ["ns/web"]}


# -------------------------------------------------------------------- rendering
def test_get_rows_carry_the_same_facts_as_json():
    s = facts.job_summary(job(status=RUNNING), [], NOW)
    headers, rows = jobs.get_rows([s], all_ns=True, colour=False)
    row = dict(zip(headers, rows[0]))
    assert row == {"NAMESPACE": "ns", "NAME": "train", "PHASE": "Running", "WORKERS": "2/2", "STEP": "120",
                   "TOKENS/S": "12.3k", "LAST CKPT": "90s ago (step 100)", "RESTARTS": "1", "HEALTH": "OK",
                   "AGE": "60m"}
    assert json.loads(output.dumps(s, "json"))["lastCheckpoint"]["step"] == 100
    assert yaml.safe_load(output.dumps(s, "yaml"))["workers"] == {"ready": 2, "desired": 2}


def test_describe_shows_the_incident_timeline_with_causes_and_recovery():
    st = {**RUNNING, "incidents": [
        {"time": ts(300), "kind": "Replace", "cause": "infrastructure", "detectedCause": "NodeLost", "rank": 1,
         "node": "n2", "message": "node n2 stopped heartbeating", "detectionLatencySeconds": 11.2,
         "recoveredAt": ts(250), "timeToRecoverSeconds": 50.0},
        {"time": ts(20), "kind": "Restart", "cause": "userError", "detectedCause": "UserError", "exitCode": 3,
         "message": "rank 0 exited with 3"}]}
    d = {"job": facts.job_summary(job(status=st), [], NOW), "spec": facts.spec_summary(job(status=st)),
         "status": {"restarts": st["restarts"]}, "workers": facts.worker_rows(job(status=st), [pod("w", 0)], NOW),
         "conditions": [], "incidents": facts.incident_rows(job(status=st)), "events": []}
    text = jobs.render_describe(d, colour=False)
    timeline = text.split("Incidents:")[1].split("Events:")[0]
    lines = [line for line in timeline.splitlines() if line.strip()]
    assert "DETECT LATENCY" in lines[0] and "RECOVERED" in lines[0]
    assert "NodeLost" in lines[1] and "rank=1 node=n2" in lines[1] and "11.2s" in lines[1] and "after 50.0s" in lines[1]
    assert "UserError" in lines[2] and "exitCode=3" in lines[2] and "not yet" in lines[2]
    assert "Health:      RECOVERING (rank 0 exited with 3)" in text
    assert d["incidents"][0]["timeToRecoverSeconds"] == 50.0


# ------------------------------------------------------------------ doctor/main
def test_doctor_exit_code_is_zero_only_when_nothing_fails():
    row = lambda c, s: {"check": c, "status": s, "detail": ""}  # noqa: E731
    assert doctor.exit_code([row("api", "PASS"), row("bucket", "SKIP")]) == 0
    assert doctor.exit_code([row("api", "PASS"), row("crd", "FAIL")]) == 1
    assert doctor.exit_code([row("api", "FAIL"), row("crd", "SKIP")]) == 4


def test_operator_processes_are_recognised_by_their_command_line():
    assert doctor.is_operator_argv(["/venv/bin/python", "-m", "stoker.operator.main"])
    assert doctor.is_operator_argv(["/venv/bin/stoker", "operator", "run", "--namespace", "x"])
    assert not doctor.is_operator_argv(["/venv/bin/stoker", "get"])
    op = {"pid": 1, "namespaces": ["a"], "server": "https://127.0.0.1:6443"}
    assert doctor.operator_matches(op, "https://127.0.0.1:6443", "a")
    assert not doctor.operator_matches(op, "https://127.0.0.1:6443", "b")
    assert not doctor.operator_matches(op, "https://10.0.0.1:6443", "a")
    assert doctor.operator_matches({**op, "namespaces": []}, "https://127.0.0.1:6443", "b")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["scale", "job"])  # --replicas missing
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["get", "-o", "xml"])
    assert e.value.code == 2


def test_no_cluster_says_how_to_point_at_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["get"]) == 4
    err = capsys.readouterr().err
    assert "--kubeconfig" in err and "KUBECONFIG" in err and "stoker cluster up" in err


def test_unreachable_api_server_exits_4(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "x"}}]}))
    assert main(["get", "--kubeconfig", str(kc)]) == 4
    assert "cannot reach the Kubernetes API" in capsys.readouterr().err
    assert main(["doctor", "--kubeconfig", str(kc), "-o", "json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["checks"][0]["status"] == "FAIL"
    assert {c["status"] for c in doc["checks"][1:]} == {"SKIP"}


def test_the_cli_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys; from stoker.cli import main, jobs, logs, actions, drain, doctor; "
            "main.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


class FakeKube:
    """get_job returns the next of the given job states (the last one repeats)."""

    def __init__(self, states: list[dict]) -> None:
        self.states = list(states)

    def get_job(self, namespace, name):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def test_checkpoint_wait_returns_once_the_checkpoint_passes_the_request():
    from stoker.cli import actions

    base = facts.checkpoint_baseline(job(status=RUNNING))
    newer = job(status={**RUNNING, "lastCheckpoint": {"step": 121, "time": ts(0)}})
    notes = []
    got = actions.wait_checkpoint(FakeKube([job(status=RUNNING), job(status=RUNNING), newer]), "ns", "train",
                                  "rid", base, timeout=30, interval=0.01, progress=notes.append)
    assert got["status"]["lastCheckpoint"]["step"] == 121
    assert notes and "want step >= 120" in notes[0]


def test_checkpoint_wait_timeout_says_whether_the_operator_acknowledged():
    from stoker.cli import actions
    from stoker.cli.kubeclient import EXIT_TIMEOUT, CliError
    from stoker.common import labels as L

    base = facts.checkpoint_baseline(job(status=RUNNING))
    acked = job(status=RUNNING)
    acked["metadata"]["annotations"] = {L.CHECKPOINT_REQUEST_HANDLED: "rid"}
    for state, phrase in ((job(status=RUNNING), "has not acknowledged"), (acked, "acknowledged the request but")):
        with pytest.raises(CliError) as e:
            actions.wait_checkpoint(FakeKube([state]), "ns", "train", "rid", base, timeout=0.05, interval=0.01,
                                    progress=lambda m: None)
        assert e.value.code == EXIT_TIMEOUT
        assert phrase in str(e.value) and "status.lastCheckpoint is step 100" in str(e.value)
        assert "wanted a checkpoint at step >= 120" in str(e.value)


# --------------------------------------------------------------------------- --rank vs --replica

def _pod(name: str, replica: int, incarnation: int = 0) -> dict:
    return {"metadata": {"name": name, "labels": {L.REPLICA_INDEX: str(replica), L.INCARNATION: str(incarnation)},
                         "creationTimestamp": "2026-01-01T00:00:00Z"}}


def test_rank_means_the_global_rank_the_incidents_report_and_replica_the_pod_index():
    from stoker.cli import workers
    from stoker.cli.kubeclient import CliError

    pods = [_pod("j-worker-0-1", 0, 1), _pod("j-worker-1-1", 1, 1)]
    # torchrun gave global ranks 0,1 to replica 1 and 2,3 to replica 0 (nprocPerNode=2)
    job = {"metadata": {"name": "j"}, "status": {"workerHeartbeats": [
        {"rank": 0, "pod": "j-worker-1-1"}, {"rank": 1, "pod": "j-worker-1-1"},
        {"rank": 2, "pod": "j-worker-0-1"}, {"rank": 3, "pod": "j-worker-0-1"}]}}
    name = lambda ps: [p["metadata"]["name"] for p in ps]  # noqa: E731
    assert name(workers.select(job, pods, rank=0)) == ["j-worker-1-1"]
    assert name(workers.select(job, pods, rank=3)) == ["j-worker-0-1"]
    assert name(workers.select(job, pods, replica=0)) == ["j-worker-0-1"]
    assert len(workers.select(job, pods)) == 2
    with pytest.raises(CliError, match=r"no rank 7 \(ranks now: 0, 1, 2, 3\)") as e:
        workers.select(job, pods, rank=7)
    assert e.value.code == 3
    with pytest.raises(CliError, match="replica index 5"):
        workers.select(job, pods, replica=5)
    with pytest.raises(CliError, match="use --replica"):  # no heartbeats: ranks are unknown, say so
        workers.select({"metadata": {"name": "j"}}, pods, rank=0)


def test_rank_and_replica_exclude_each_other_on_the_command_line():
    from stoker.cli.main import build_parser

    for cmd in (["logs", "j"], ["restart", "j"]):
        assert build_parser().parse_args([*cmd, "--replica", "1"]).replica == 1
        with pytest.raises(SystemExit):
            build_parser().parse_args([*cmd, "--rank", "0", "--replica", "1"])


def test_get_selector_name_output_and_request_timeout_parse():
    from stoker.cli.common import request_timeout
    from stoker.cli.main import build_parser

    a = build_parser().parse_args(["get", "-l", "team=nlp,tier!=test", "-o", "name", "--request-timeout", "2m"])
    assert (a.selector, a.output, a.request_timeout) == ("team=nlp,tier!=test", "name", 120.0)
    assert request_timeout("0") is None and request_timeout("500ms") == 0.5 and request_timeout("7") == 7.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["get", "--request-timeout", "soon"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["describe", "j", "-o", "name"])  # names only where they make sense


def test_top_shows_the_training_picture_and_anomalies_when_known():
    from stoker.cli.jobs import training_line

    s = {"loss": 3.912, "training": {"gradNorm": 0.5812, "learningRate": 0.0003, "valLoss": None,
                                     "dataWaitFraction": 0.021}, "anomalies": 2, "rollbacks": 1}
    assert training_line(s) == "loss 3.912  grad-norm 0.581  lr 0.0003  data-wait 2%  anomalies 2 (rollbacks 1)"
    assert training_line({"loss": None, "training": {}}) == ""
    gpu = {"loss": 2.5, "training": {"dataWaitFraction": 0.0, "collectiveWaitFraction": 0.125, "gpuUtilization": 0.93,
                                     "gpuMemoryBytes": 3 * 2**30}}
    assert training_line(gpu) == "loss 2.5  data-wait 0%  comm-wait 12%  gpu 93%  gpu-mem 3.0GiB"
