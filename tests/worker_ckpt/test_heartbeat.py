"""Heartbeat stream between the worker SDK and the operator's server."""
import threading
import time

import grpc
import pytest

from stoker.common import auth
from stoker.common.heartbeat_server import CHECKPOINT_NOW, STOP_AFTER_CHECKPOINT, HeartbeatServer
from stoker.common.proto import stoker_pb2 as pb
from stoker.common.proto import stoker_pb2_grpc as pb_grpc
from stoker.worker.sdk import Session

TOKENS = {("ns", "job-a"): "token-a", ("ns", "job-b"): "token-b"}


def lookup(namespace, name):
    return TOKENS.get((namespace, name))


def eventually(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {predicate.__doc__ or predicate}")


@pytest.fixture
def server():
    srv = HeartbeatServer(lookup, "127.0.0.1:0")
    srv.start()
    yield srv
    srv.stop(grace=0)


def session_for(srv, job="job-a", token="token-a", rank=0, **kw):
    return Session(f"127.0.0.1:{srv.port}", token, namespace="ns", job_name=job, job_uid="uid-1",
                   rank=rank, world_size=2, pod_name=f"{job}-{rank}", node_name="node-1",
                   interval_s=0.1, **kw)


def raw_stream(port, metadata, messages):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.HeartbeatStub(ch)
        call = stub.Stream(iter(messages), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        return info.value.code(), info.value.details()


def message(namespace="ns", job="job-a", rank=0):
    return pb.WorkerMessage(identity=pb.JobIdentity(namespace=namespace, job_name=job, rank=rank), step=1)


def test_heartbeats_carry_step_phase_and_metrics(server):
    with session_for(server) as s:
        s.step(7, loss=2.5, tokens_per_second=1000.0, my_metric=3)
        w = eventually(lambda: [w for w in server.workers("ns", "job-a") if w.step == 7])[0]
    assert (w.rank, w.pod_name, w.node_name, w.job_uid, w.phase) == (0, "job-a-0", "node-1", "uid-1", "TRAINING")
    assert w.metrics["loss"] == 2.5 and w.metrics["tokens_per_second"] == 1000.0 and w.metrics["my_metric"] == 3.0


def test_wrong_token_is_unauthenticated(server):
    code, details = raw_stream(server.port, auth.client_metadata("ns", "job-a", "token-b"), [message()])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert server.workers("ns", "job-a") == []
    code, _ = raw_stream(server.port, (), [message()])
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_token_of_job_a_cannot_speak_for_job_b(server):
    code, details = raw_stream(server.port, auth.client_metadata("ns", "job-a", "token-a"),
                               [message(job="job-b")])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "job-b" in details
    assert server.workers("ns", "job-b") == []


def test_sdk_with_wrong_token_keeps_training_and_records_error(server):
    with session_for(server, token="wrong") as s:
        for i in range(5):
            s.step(i)  # never blocks, never raises
        eventually(lambda: s._reporter.last_error and "UNAUTHENTICATED" in s._reporter.last_error)
    assert server.workers("ns", "job-a") == []


def test_checkpoint_now_reaches_session_and_is_acked(server):
    class Result:
        step, ok, duration_s, bytes, error = 40, True, 1.5, 1234, None

    with session_for(server) as s:
        s.step(39)
        eventually(lambda: server.workers("ns", "job-a"))
        rid = server.queue_command("ns", "job-a", CHECKPOINT_NOW, reason="test")
        eventually(s.checkpoint_requested)
        assert not s.stop_requested()
        eventually(lambda: server.command_acks(rid) == {0: "RECEIVED"})
        older = Result()
        older.step = 38  # a save already in flight when the request came does not answer it
        s.report_checkpoint(older)
        assert s.checkpoint_requested()
        s.report_checkpoint(Result())
        assert not s.checkpoint_requested()
        eventually(lambda: server.command_acks(rid) == {0: "DONE"})
        w = eventually(lambda: [w for w in server.workers("ns", "job-a") if "last_committed_step" in w.metrics])[0]
    assert w.metrics["last_committed_step"] == 40 and w.metrics["checkpoint_bytes"] == 1234


def test_commands_go_only_to_their_job(server):
    with session_for(server, job="job-a") as a, session_for(server, job="job-b", token="token-b") as b:
        eventually(lambda: server.workers("ns", "job-a") and server.workers("ns", "job-b"))
        server.queue_command("ns", "job-b", STOP_AFTER_CHECKPOINT)
        eventually(b.stop_requested)
        assert b.checkpoint_requested()
        time.sleep(0.3)
        assert not a.checkpoint_requested() and not a.stop_requested()


def test_session_survives_server_restart(server):
    port = server.port
    with session_for(server) as s:
        s.step(1)
        eventually(lambda: server.workers("ns", "job-a"))
        server.stop(grace=0)
        for i in range(2, 50):  # training continues while the operator is away
            s.step(i)
        fresh = HeartbeatServer(lookup, f"127.0.0.1:{port}")
        fresh.start()
        try:
            w = eventually(lambda: [w for w in fresh.workers("ns", "job-a") if w.step == 49], timeout=20)[0]
            assert w.connected
            rid = fresh.queue_command("ns", "job-a", CHECKPOINT_NOW)
            eventually(s.checkpoint_requested)
            eventually(lambda: fresh.command_acks(rid) == {0: "RECEIVED"})
        finally:
            fresh.stop(grace=0)


def test_no_operator_address_is_a_no_op():
    s = Session.from_env({})
    assert not s.enabled
    with s:
        s.step(1, loss=1.0)
        assert not s.checkpoint_requested() and not s.stop_requested()
    assert not any(t.name == "stoker-heartbeat" for t in threading.enumerate())


def test_from_env_reads_identity():
    s = Session.from_env({"STOKER_OPERATOR_ADDR": "127.0.0.1:1", "STOKER_JOB_TOKEN": "t",
                          "STOKER_JOB_NAMESPACE": "ns", "STOKER_JOB_NAME": "j", "STOKER_JOB_UID": "u",
                          "STOKER_INCARNATION": "3", "RANK": "5", "WORLD_SIZE": "8",
                          "STOKER_REPLICA_INDEX": "2", "STOKER_POD_NAME": "p", "STOKER_NODE_NAME": "n",
                          "STOKER_HEARTBEAT_INTERVAL_SECONDS": "0.5"})
    i = s.identity
    assert (i.namespace, i.job_name, i.job_uid, i.incarnation, i.rank, i.world_size, i.replica_index,
            i.pod_name, i.node_name, s.interval_s) == ("ns", "j", "u", 3, 5, 8, 2, "p", "n", 0.5)
    assert s.enabled
    with pytest.raises(ValueError, match="STOKER_INCARNATION"):
        Session.from_env({"STOKER_INCARNATION": "x"})


def test_token_auth_is_pure_and_constant_time_compare():
    md = auth.client_metadata("ns", "job-a", "token-a")
    assert auth.authenticate(md, lookup) == auth.JobKey("ns", "job-a")
    for bad in [auth.client_metadata("ns", "job-a", "nope"), auth.client_metadata("ns", "ghost", "token-a"),
                (("x-stoker-job", "ns/job-a"),), (("authorization", "Bearer token-a"),),
                (("authorization", "token-a"), ("x-stoker-job", "ns/job-a"))]:
        with pytest.raises(auth.AuthError):
            auth.authenticate(bad, lookup)
    with pytest.raises(auth.AuthError, match="namespace"):
        auth.JobKey.parse("no-slash")


def test_registry_delivers_once_per_rank_and_incarnation_and_retires_answered_commands():
    from stoker.common.heartbeat_server import HeartbeatRegistry

    reg, job = HeartbeatRegistry(), auth.JobKey("ns", "job-a")

    def msg(rank, acks=()):
        return pb.WorkerMessage(identity=pb.JobIdentity(namespace="ns", job_name="job-a", rank=rank, world_size=2),
                                acks=list(acks))

    reg.observe(job, msg(0))
    reg.observe(job, msg(1))
    rid = reg.queue_command("ns", "job-a", CHECKPOINT_NOW)
    assert [c.request_id for c in reg.take_commands(job, 0, 0)] == [rid]
    assert reg.take_commands(job, 0, 0) == []                       # not twice to the same worker
    assert [c.request_id for c in reg.take_commands(job, 0, 1)] == [rid]  # a restarted worker gets it
    assert reg.take_commands(auth.JobKey("ns", "job-b"), 0, 0) == []  # never to another job
    done = [pb.CommandAck(request_id=rid, type=CHECKPOINT_NOW, state=pb.DONE, step=5)]
    reg.observe(job, msg(0, done))
    reg.observe(job, msg(1, done))
    assert reg.command_acks(rid) == {0: "DONE", 1: "DONE"}
    assert reg.take_commands(job, 1, 7) == []                       # answered by all ranks: retired
    with pytest.raises(ValueError, match="CHECKPOINT_NOW"):
        reg.queue_command("ns", "job-a", 99)


def test_the_end_of_a_stream_is_heard_and_only_the_stream_that_spoke_last_disconnects_its_rank():
    """A trainer that exits ends its stream: the listener (the operator's progress tracker)
    hears ``connected=False`` with last_seen unchanged. When a new trainer of the rank
    (restarted in place by torchrun) already speaks on a newer stream, the old stream's end
    does not mark it disconnected."""
    heard = []
    srv = HeartbeatServer(lookup, "127.0.0.1:0")
    srv.registry._on_update = heard.append
    srv.start()
    try:
        old = session_for(srv)
        old.__enter__()
        old.step(3)
        eventually(lambda: any(w.step == 3 and w.connected for w in heard))
        old.__exit__(None, None, None)   # its final heartbeat, then the stream ends
        w = eventually(lambda: [w for w in heard if not w.connected])[-1]
        last = [v for v in heard if v.connected][-1]
        assert (w.rank, w.step, w.last_seen_monotonic) == (0, 3, last.last_seen_monotonic)
        assert not srv.workers("ns", "job-a")[0].connected

        heard.clear()
        with session_for(srv) as new:
            new.step(4)
            eventually(lambda: any(w.step == 4 and w.connected for w in heard))
            stream = srv.workers("ns", "job-a")[0].stream
            srv.registry.disconnected(auth.JobKey("ns", "job-a"), 0, stream - 1)   # an older stream ends late
            assert srv.workers("ns", "job-a")[0].connected
            assert all(w.connected for w in heard)
    finally:
        srv.stop(grace=0)
