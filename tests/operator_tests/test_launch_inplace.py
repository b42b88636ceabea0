"""In-place restarts (issue 12), the pod's part: what the operator renders, what the launcher
does when it cannot report, how a report reaches the operator, and which exits are not restarted."""
from __future__ import annotations

import time
import types

import pytest

from stoker.common import env as E
from stoker.operator import launch_inplace as LI
from stoker.operator.jobspec import job_view
from stoker.operator.pods import RenderConfig, render_pod
from tests.recovery_tests.test_heartbeats import FakeSecrets, eventually

from .helpers import job_body

CFG = RenderConfig(operator_addr="10.0.0.5:50051")


def rendered(cfg=CFG, **spec):
    trainer = render_pod(job_view(job_body(**spec)), 0, 0, cfg)["spec"]["containers"][0]
    restarts = next(a for a in trainer["command"] if a.startswith("--max-restarts="))
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    return int(restarts.split("=")[1]), env.get(E.IN_PLACE_RESTARTS)


def test_a_fixed_size_job_restarts_trainers_in_place_by_default_and_the_launcher_is_told_to_report():
    assert rendered() == (3, "3")
    assert rendered(failurePolicy={"inPlaceRestarts": 1}) == (1, "1")


def test_in_place_restarts_off_where_nobody_would_report_them():
    assert rendered(failurePolicy={"inPlaceRestarts": 0}) == (0, None)
    assert rendered(RenderConfig(operator_addr="10.0.0.5:50051", launcher="torchrun")) == (0, None)
    assert rendered(RenderConfig()) == (0, None)   # no heartbeat service: no operator to tell


def test_elastic_jobs_keep_torchruns_own_restarts_and_report_nothing():
    assert rendered(minReplicas=1, maxReplicas=4) == (CFG.torchrun_max_restarts, None)


def test_a_launcher_that_cannot_report_turns_its_in_place_restarts_off(capsys):
    args = ["--nnodes=2:2", "--max-restarts=3", "train.py"]
    assert LI.install(args, {E.IN_PLACE_RESTARTS: "3"}, lambda r: None) == ["--max-restarts=0", "--nnodes=2:2",
                                                                             "train.py"]
    assert "in-place restarts off" in capsys.readouterr().err
    assert LI.install(args, {}, lambda r: None) == args   # not asked for: torchrun's arguments as rendered


def test_a_report_names_the_signal_like_a_shell_and_keeps_the_errors_end():
    r = LI.failure_report(1, -9, "", 41, restart=1, left=2, failed_at=5.0)
    assert (r["exit_code"], r["step"], r["restart"], r["restarts_left"]) == (137, 41, 1, 2)
    r = LI.failure_report(0, 1, "x" * 5000 + "gloo", None, restart=2, left=0, failed_at=5.0)
    assert r["exit_code"] == 1 and r["step"] == -1 and len(r["error"]) == LI.ERROR_CHARS and r["error"][-4:] == "gloo"



def test_a_report_takes_the_error_file_torchelastic_read_from_a_trainer_that_used_record(tmp_path, monkeypatch):
    """CI-less bench run 2026-12-03: a peer's trainer that died with @record's error file made
    ProcessFailure.message a dict; slicing it raised in the launcher, whose pod failed, and the
    in-place restart became a new incarnation."""
    pytest.importorskip("torch")
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
    from torch.distributed.elastic.multiprocessing.errors.error_handler import ErrorHandler

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    try:
        raise RuntimeError("[gloo] Connection closed by peer")
    except RuntimeError as exc:
        ErrorHandler().record_exception(exc)
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(tmp_path / "error.json"))
    r = LI.failure_report(0, failure.exitcode, failure.message, 12, restart=1, left=2, failed_at=5.0)
    assert r["error"].rstrip().endswith("RuntimeError: [gloo] Connection closed by peer") and "Traceback" in r["error"]


@pytest.fixture
def hb():
    from stoker.operator import heartbeats as H

    changes: list = []
    svc = H.OperatorHeartbeats(FakeSecrets(), "127.0.0.1:0", on_change=lambda ns, n: changes.append((ns, n)))
    svc.start()
    svc.changes = changes
    yield svc
    svc.stop()


def test_the_launchers_report_reaches_the_operator_at_once_and_is_no_workers_heartbeat(hb):
    token = hb.ensure_secret("ns", "j", {"apiVersion": "v1", "kind": "X", "name": "j", "uid": "u"})
    env = {E.OPERATOR_ADDR: f"127.0.0.1:{hb.port}", E.JOB_TOKEN: token, E.JOB_NAMESPACE: "ns", E.JOB_NAME: "j",
           E.INCARNATION: "2", E.POD_NAME: "j-worker-1-2", E.NODE_NAME: "n1", E.IN_PLACE_RESTARTS: "3"}
    reporter = LI.Reporter.create(env)
    t0 = time.time()
    reporter.send(LI.failure_report(1, -9, "", 41, restart=1, left=2, failed_at=t0))
    [r] = eventually(lambda: hb.reports("ns", "j"))
    assert (r.pod_name, r.node_name, r.incarnation, r.rank, r.exit_code, r.step) == \
        ("j-worker-1-2", "n1", 2, 1, 137, 41)
    assert r.key == "j-worker-1-2#1" and abs(r.failed_at - t0) < 1e-3 and r.seen_at - t0 < 2.0
    assert eventually(lambda: ("ns", "j") in hb.changes)   # a reconcile pass is asked for at once
    assert hb.workers("ns", "j") == [] and hb.ranks("ns", "j") == []


def test_the_launchers_keepalive_is_seen_until_it_stops_and_counts_as_a_message_heard(hb):
    """Reporter.keep_alive: a LauncherAlive call every interval; the operator keeps when the pod's
    launcher last spoke (the frozen-launcher rule reads it) and counts it as a message heard (the
    frozen rule's reference); it is no failure report and no rank."""
    import threading

    token = hb.ensure_secret("ns", "j", {"apiVersion": "v1", "kind": "X", "name": "j", "uid": "u"})
    env = {E.OPERATOR_ADDR: f"127.0.0.1:{hb.port}", E.JOB_TOKEN: token, E.JOB_NAMESPACE: "ns", E.JOB_NAME: "j",
           E.INCARNATION: "2", E.POD_NAME: "j-worker-1-2", E.NODE_NAME: "n1", E.IN_PLACE_RESTARTS: "3"}
    stop = threading.Event()
    thread = LI.Reporter.create(env).keep_alive(0.1, stop)
    [b] = eventually(lambda: hb.launchers("ns", "j"))
    assert (b.pod_name, b.node_name, b.incarnation) == ("j-worker-1-2", "n1", 2)
    first = b.last_seen
    later = eventually(lambda: [x for x in hb.launchers("ns", "j") if x.last_seen > first + 0.25])
    assert hb.newest_heard() >= later[0].last_seen
    assert hb.reports("ns", "j") == [] and hb.ranks("ns", "j") == []   # no failure, no rank
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    [stopped] = hb.launchers("ns", "j")
    time.sleep(0.5)
    assert hb.launchers("ns", "j") == [stopped]                         # quiet now


def test_a_launcher_keepalive_to_an_operator_without_the_call_stops_and_is_no_failure_report():
    """An older operator has no LauncherAlive: it answers UNIMPLEMENTED and the launcher stops asking
    (sending the keepalive as a launcher report on the old stream would read as a trainer failure)."""
    from concurrent import futures

    import grpc

    from stoker.common.proto import stoker_pb2_grpc as pb_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_HeartbeatServicer_to_server(pb_grpc.HeartbeatServicer(), server)   # no method implemented
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {E.OPERATOR_ADDR: f"127.0.0.1:{port}", E.JOB_TOKEN: "t", E.JOB_NAMESPACE: "ns", E.JOB_NAME: "j",
               E.POD_NAME: "j-worker-0-0"}
        thread = LI.Reporter.create(env).keep_alive(0.05)
        thread.join(5)
        assert not thread.is_alive()
    finally:
        server.stop(0)


def test_a_bad_token_report_is_refused():
    from stoker.operator import heartbeats as H

    svc = H.OperatorHeartbeats(FakeSecrets(), "127.0.0.1:0")
    svc.start()
    try:
        svc.ensure_secret("ns", "j", {"apiVersion": "v1", "kind": "X", "name": "j", "uid": "u"})
        env = {E.OPERATOR_ADDR: f"127.0.0.1:{svc.port}", E.JOB_TOKEN: "wrong", E.JOB_NAMESPACE: "ns",
               E.JOB_NAME: "j"}
        LI.Reporter(env).send(LI.failure_report(0, 1, "", 3, restart=1, left=2, failed_at=time.time()))
        time.sleep(1.0)
        assert svc.reports("ns", "j") == []
    finally:
        svc.stop()


@pytest.mark.torch
def test_the_agent_reports_a_failure_it_restarts_and_does_not_restart_the_trainers_own_verdicts(monkeypatch):
    from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    results: list = []
    monkeypatch.setattr(LocalElasticAgent, "_monitor_workers", lambda self, wg: results.pop(0))
    seen: list = []
    assert LI.hook_agent(lambda agent, result: seen.append(result))
    agent = types.SimpleNamespace(_remaining_restarts=2)

    def failed(code):
        return RunResult(WorkerState.FAILED, failures={1: types.SimpleNamespace(exitcode=code, timestamp=1)})

    results[:] = [failed(-9), failed(88)]
    LocalElasticAgent._monitor_workers(agent, None)
    assert len(seen) == 1 and agent._remaining_restarts == 2       # reported; torchrun restarts
    LocalElasticAgent._monitor_workers(agent, None)
    assert len(seen) == 1 and agent._remaining_restarts == 0       # paused (88): the pod fails, the operator decides



SCRIPT = """import json, os, sys
with open(os.environ["OUT"], "w") as f:
    json.dump({"torch_loaded": "torch" in sys.modules, "argv": sys.argv,
               "warm_args": os.environ.get("STOKER_WARM_ARGS"),
               "cmdline": open("/proc/self/cmdline", "rb").read().decode().split(chr(0))}, f)
sys.exit(3)
"""


@pytest.mark.torch
def test_a_restarted_trainer_starts_warm_with_its_own_environment_command_line_and_exit_code(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from stoker.operator.launch_warm import WarmPool

    script = tmp_path / "trainer.py"
    script.write_text(SCRIPT)
    pool = WarmPool(subprocess.Popen)
    args = [sys.executable, "-u", str(script), "--steps", "5"]

    def start(n: int):
        out = tmp_path / f"out-{n}.json"
        proc = pool(args=args, env={**os.environ, "OUT": str(out)}, stdout=None, stderr=None, start_new_session=True)
        assert proc.wait(60) == 3            # the trainer's own exit code
        return json.loads(out.read_text()), proc

    cold, first = start(1)                   # the first start is cold, and warms one for the next
    [warm] = pool._idle[tuple(args)]
    assert cold["torch_loaded"] is False and pool.handed == 0
    assert str(script) not in open(f"/proc/{warm.pid}/cmdline", "rb").read().decode()   # idle: no trainer
    again, second = start(2)                 # a restart: handed to the warm process
    assert second is warm and pool.handed == 1
    assert again["torch_loaded"] is True and again["warm_args"] is None
    assert again["argv"] == [str(script), "--steps", "5"]
    assert again["cmdline"][:len(args)] == args   # found as the trainer by its command line
    assert len(pool._idle[tuple(args)]) == 1      # and the next one warms


@pytest.mark.parametrize("args, poll", [
    (["--nnodes=2:2"], 0.1), (["--nnodes", "4"], 0.1), (["--nnodes=1:50"], 0.5),
    (["--nnodes=100:1000"], 1.0), ([], 1.0), (["--nnodes=x"], 1.0)])
def test_a_small_jobs_rendezvous_polls_faster_but_never_more_often_than_the_store_can_take(args, poll):
    assert LI.rendezvous_poll_s(args) == pytest.approx(poll)


def test_the_rendezvous_poll_of_one_second_is_shortened_and_nothing_else(monkeypatch):
    dr = pytest.importorskip("torch.distributed.elastic.rendezvous.dynamic_rendezvous")
    waited: list = []
    monkeypatch.setattr(dr, "_delay", lambda seconds: waited.append(seconds))
    assert LI.quick_rendezvous_polls(0.1) and LI.quick_rendezvous_polls(0.2)   # again: not stacked
    dr._delay(seconds=1)
    dr._delay(seconds=(0, 0.3))
    assert waited == [0.2, (0, 0.3)]
    # the call torch makes while a round fills is still the one patched
    import inspect
    assert "_delay(seconds=1)" in inspect.getsource(dr._DistributedRendezvousOpExecutor)


class CountingBackend:
    """A rendezvous backend that counts reads of the shared state (pure bookkeeping)."""
    def __init__(self):
        self.reads = 0

    def get_state(self):
        self.reads += 1
        return None


def test_the_shared_rendezvous_state_is_read_again_after_the_poll_not_a_second_later(monkeypatch):
    """torch caches the rendezvous state for a second: a running agent saw the crashed pod's agent
    waiting in the next round (num_nodes_waiting) up to a second late, and stopped its trainer then."""
    dr = pytest.importorskip("torch.distributed.elastic.rendezvous.dynamic_rendezvous")
    monkeypatch.setattr(dr._BackendRendezvousStateHolder, "__init__", dr._BackendRendezvousStateHolder.__init__)
    assert LI.quick_rendezvous_polls(0.1) and LI.quick_rendezvous_polls(0.1)   # again: not stacked
    from datetime import timedelta

    backend = CountingBackend()
    settings = dr.RendezvousSettings("job", 2, 2, dr.RendezvousTimeout(), keep_alive_interval=timedelta(seconds=5),
                                     keep_alive_max_attempt=3)
    holder = dr._BackendRendezvousStateHolder(backend, settings)
    holder.sync()
    time.sleep(0.15)
    holder.sync()
    assert backend.reads == 2, "the state came from torch's one-second cache"
    assert dr._BackendRendezvousStateHolder(backend, settings, cache_duration=5)._cache_duration == 5  # only the default
    import inspect
    assert "_BackendRendezvousStateHolder(backend, settings)" in inspect.getsource(dr.DynamicRendezvousHandler)


def test_a_trainer_that_finished_training_and_then_aborted_on_its_way_out_is_no_failure(monkeypatch, tmp_path):
    """CI: a trainer SIGABRTed at interpreter exit after its last step was restarted in place and
    counted as a WorkerKilled incident. Only ranks that said FINISHED are forgiven."""
    from torch.distributed.elastic.agent.server.api import RunResult, WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    from stoker.common import last_step

    done, working = last_step.StepFile(tmp_path, 0), last_step.StepFile(tmp_path, 1)
    done.write(1000)
    done.finish()
    working.write(999)
    assert last_step.read(tmp_path, 0) == 1000 and last_step.finished(tmp_path, 0)
    assert last_step.read(tmp_path, 1) == 999 and not last_step.finished(tmp_path, 1)

    results: list = []
    monkeypatch.setattr(LocalElasticAgent, "_monitor_workers", lambda self, wg: results.pop(0))
    said: list = []
    assert LI.forgive_finished(lambda rank: last_step.finished(tmp_path, rank), said.append)
    seen: list = []
    assert LI.hook_agent(lambda agent, result: seen.append(result))
    agent = types.SimpleNamespace(_remaining_restarts=2)
    group = types.SimpleNamespace(workers=[types.SimpleNamespace(global_rank=0), types.SimpleNamespace(global_rank=1)])

    def failed(*ranks):
        aborted = types.SimpleNamespace(exitcode=-6, timestamp=1)
        return RunResult(WorkerState.FAILED, failures=dict.fromkeys(ranks, aborted))

    results[:] = [failed(0), failed(0, 1), failed(1)]
    assert LocalElasticAgent._monitor_workers(agent, group).state == WorkerState.SUCCEEDED
    assert seen == [] and "after finishing training" in said[0]
    assert LocalElasticAgent._monitor_workers(agent, group).state == WorkerState.FAILED   # rank 1 had not finished
    assert LocalElasticAgent._monitor_workers(agent, group).state == WorkerState.FAILED
    assert len(seen) == 2


@pytest.mark.torch
def test_a_warm_process_imports_only_once_the_trainer_beside_it_completed_a_step(tmp_path, monkeypatch, capfd):
    """bench_recovery: the warm process started beside a restarted trainer imported torch while that
    trainer restored (restore 1.0 s in place, 0.45 s in a new pod without one). A warm process says
    when it is ready (bench_recovery_real waits for that); one handed a trainer sooner does not."""
    import os
    import subprocess
    import sys
    import time

    from stoker.common import last_step
    from stoker.operator import launch_warm

    def loaded(pid):
        return "libtorch" in open(f"/proc/{pid}/maps").read()

    def until(cond, limit=30.0):
        end = time.monotonic() + limit
        while not cond() and time.monotonic() < end:
            time.sleep(0.1)
        return cond()

    steps = tmp_path / "steps"
    steps.mkdir()
    monkeypatch.setenv(E.LAST_STEP_DIR, str(steps))
    monkeypatch.setattr(launch_warm, "WARM_DELAY_S", 120.0)
    script = tmp_path / "trainer.py"
    script.write_text(SCRIPT)
    args = [sys.executable, "-u", str(script)]
    pool = launch_warm.WarmPool(subprocess.Popen)
    env = {**os.environ, "OUT": str(tmp_path / "o.json")}
    assert pool(args=args, env=env, stdout=None, stderr=None).wait(60) == 3
    [warm] = pool._idle[tuple(args)]
    time.sleep(3)
    assert not loaded(warm.pid)                        # no step yet: it waits
    last_step.StepFile(steps, 0).write(1)              # the trainer beside it trains
    assert until(lambda: loaded(warm.pid))
    said = []
    assert until(lambda: said.append(capfd.readouterr().err) or f"ready for the next restart of {script} in "
                 f"{warm.pid}" in "".join(said)), said
    handed = pool(args=args, env=env, stdout=None, stderr=None)
    assert handed is warm and handed.wait(60) == 3
    # a trainer needed before any step ends the wait at once
    [idle] = pool._idle[tuple(args)]
    start = time.monotonic()
    assert pool(args=args, env=env, stdout=None, stderr=None) is idle and idle.wait(60) == 3
    assert time.monotonic() - start < 60
    assert f"in {idle.pid} (" not in capfd.readouterr().err
    for p in pool._idle.get(tuple(args), []):
        p.kill()


@pytest.mark.torch
def test_a_warm_process_has_imported_what_a_resuming_trainer_imports_before_its_first_step():
    """Real nodes (bench_recovery_real): a trainer restarted warm spent 1.3 s between its process group
    and its S3 client, importing boto3 and the checkpoint tiers late, and (py-spy) 1.7 s in
    torch.use_deterministic_algorithms importing torch._inductor; the warm set names them."""
    import subprocess
    import sys

    late = ("boto3", "grpc", "stoker.worker.sdk", "stoker.worker.checkpoint.manager", "stoker.worker.checkpoint.s3",
            "stoker.worker.checkpoint.memory", "stoker.worker.checkpoint.memory_peer", "torch.distributed.checkpoint",
            "torch._inductor.config")
    code = ("import importlib, sys, torch, stoker.worker.train as t\n"
            "[importlib.import_module(m) for m in t.__stoker_warm__]\n"
            f"print([m for m in {late!r} if m not in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
