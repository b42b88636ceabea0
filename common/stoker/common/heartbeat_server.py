"""The operator's end of the heartbeat stream (torch-free, embeddable).

    server = HeartbeatServer(token_lookup, "0.0.0.0:50051")
    server.start()
    server.workers("ns", "job")                 # last heartbeat/step/phase per rank
    rid = server.queue_command("ns", "job", CHECKPOINT_NOW, reason="node drain")
    server.command_acks(rid)                    # {rank: "RECEIVED" | "DONE" | ...}
    server.stop()

State lives in :class:`HeartbeatRegistry` (plain, thread-safe, no gRPC); the
servicer is a thin shell that authenticates the call, checks every message's
identity against the token's job, records it and streams queued commands.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Callable

import grpc

from .launcher_beats import LauncherBeat, LauncherBeats
from .auth import AuthError, JobKey, TokenLookup, authenticate, identity_matches
from .proto import stoker_pb2 as pb
from .proto import stoker_pb2_grpc as pb_grpc

log = logging.getLogger("stoker.common.heartbeat")

CHECKPOINT_NOW = pb.CHECKPOINT_NOW
STOP_AFTER_CHECKPOINT = pb.STOP_AFTER_CHECKPOINT


@dataclass(frozen=True)
class WorkerStatus:
    """What the operator knows about one rank of one job (a snapshot)."""

    namespace: str
    job_name: str
    rank: int
    job_uid: str = ""
    incarnation: int = 0
    world_size: int = 0
    replica_index: int = 0
    pod_name: str = ""
    node_name: str = ""
    step: int = -1
    phase: str = "PHASE_UNSPECIFIED"
    metrics: dict = field(default_factory=dict)
    error: str = ""
    last_seen: float = 0.0            # wall clock (time.time()) of the last message
    last_seen_monotonic: float = 0.0  # for age computations in this process
    connected: bool = False
    messages: int = 0
    stream: int = 0                   # which stream spoke last (only that one's end disconnects)
    anomalies: tuple = ()             # the process's latest training anomalies (dicts, proto field names)
    finish_reason: str = ""           # FINISHED before the last step: why ("EarlyStopped: ...")
    activity: str = ""                # data | compute | collective | checkpoint ("": not reported)
    activity_seconds: float = 0.0     # how long it had been at it when the message was sent

    def age_s(self, now_monotonic: float | None = None) -> float:
        return (now_monotonic if now_monotonic is not None else time.monotonic()) - self.last_seen_monotonic


_STREAMS = itertools.count(1)  # stream ids (0: none)
MAX_REPORTS = 20  # launcher reports kept per job (the newest)


@dataclass(frozen=True)
class LauncherReport:
    """A pod's launcher saw its trainer (``rank``) exit with an error and restarts its workers in
    place (WorkerMessage.launcher). Times are wall clock (time.time())."""

    namespace: str
    job_name: str
    incarnation: int
    rank: int
    pod_name: str
    node_name: str
    exit_code: int
    step: int                 # -1: unknown
    error: str
    failed_at: float          # when the launcher saw the exit (its clock)
    restart: int              # the launcher's in-place restart number, from 1
    restarts_left: int
    seen_at: float            # when the operator received it

    @property
    def key(self) -> str:
        """Names this report in status (an incident's ``workerRestarts``)."""
        return f"{self.pod_name}#{self.restart}"


def launcher_report(job: JobKey, msg: pb.WorkerMessage, seen_at: float) -> LauncherReport:
    ident, r = msg.identity, msg.launcher
    failed = r.failed_at.seconds + r.failed_at.nanos / 1e9 if r.HasField("failed_at") else seen_at
    return LauncherReport(job.namespace, job.name, ident.incarnation, ident.rank, ident.pod_name, ident.node_name,
                          r.exit_code, r.step, r.error, failed, r.restart, r.restarts_left, seen_at)


@dataclass
class _Command:
    job: JobKey
    proto: pb.OperatorCommand
    expires_at: float
    delivered: set = field(default_factory=set)   # {(rank, incarnation)}
    acks: dict = field(default_factory=dict)      # rank -> (state name, message, step)

    def finished(self, world_size: int) -> bool:
        final = {r for r, (state, _, _) in self.acks.items() if state in ("DONE", "REJECTED")}
        return world_size > 0 and all(r in final for r in range(world_size))


def _metrics_dict(m: pb.Metrics) -> dict:
    out = {f.name: v for f, v in m.ListFields() if f.name != "extra"}
    out.update(dict(m.extra))
    return out


def _anomaly_dict(a: pb.Anomaly) -> dict:
    return {f.name: v for f, v in a.ListFields()} | {"rollbacks": a.rollbacks, "rolled_back_to": a.rolled_back_to}


class HeartbeatRegistry:
    """Per-worker last heartbeat and per-job command queue. Thread-safe."""

    def __init__(self, on_update: Callable[[WorkerStatus], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_report: Callable[[LauncherReport], None] | None = None):
        self._lock = threading.Condition()
        self._workers: dict[tuple[str, str, int], WorkerStatus] = {}
        self._reports: dict[tuple[str, str], list[LauncherReport]] = {}
        self._on_report = on_report
        self._commands: dict[str, _Command] = {}
        self._on_update = on_update
        self._clock = clock
        self.newest_seen = 0.0  # clock time of the newest message from any worker (the frozen rule's reference)
        self.launchers = LauncherBeats()  # launchers' keepalives (launcher_beats.py)

    # ---- worker side
    def observe(self, job: JobKey, msg: pb.WorkerMessage, stream: int = 0) -> WorkerStatus:
        ident = msg.identity
        key = (job.namespace, job.name, ident.rank)
        with self._lock:
            prev = self._workers.get(key) or WorkerStatus(job.namespace, job.name, ident.rank)
            status = replace(
                prev,
                job_uid=ident.job_uid, incarnation=ident.incarnation, world_size=ident.world_size,
                replica_index=ident.replica_index, pod_name=ident.pod_name, node_name=ident.node_name,
                step=msg.step, phase=pb.Phase.Name(msg.phase), metrics=_metrics_dict(msg.metrics),
                error=msg.error, last_seen=time.time(), last_seen_monotonic=self._clock(),
                connected=True, messages=prev.messages + 1, stream=stream,
                anomalies=tuple(_anomaly_dict(a) for a in msg.anomalies), finish_reason=msg.finish_reason,
                activity=msg.activity, activity_seconds=msg.activity_seconds,
            )
            self._workers[key] = status
            self.newest_seen = max(self.newest_seen, status.last_seen_monotonic)
            for ack in msg.acks:
                cmd = self._commands.get(ack.request_id)
                if cmd is not None and cmd.job == job:
                    cmd.acks[ident.rank] = (pb.AckState.Name(ack.state), ack.message, ack.step)
        self._notify(status)
        return status

    def launcher_alive(self, job: JobKey, ident: pb.JobIdentity) -> None:
        """A launcher's keepalive (``LauncherAlive``): counts as a message heard, like a trainer's."""
        now = self._clock()
        self.launchers.alive(LauncherBeat(job.namespace, job.name, ident.pod_name, ident.node_name,
                                          ident.incarnation, now))
        with self._lock:
            self.newest_seen = max(self.newest_seen, now)

    def report(self, job: JobKey, msg: pb.WorkerMessage) -> LauncherReport:
        """A launcher's report (``msg.launcher`` set): kept per job, the listener told at once."""
        rep = launcher_report(job, msg, time.time())
        with self._lock:
            kept = self._reports.setdefault((job.namespace, job.name), [])
            kept[:] = [*kept, rep][-MAX_REPORTS:]
        log.info("heartbeat.launcher_report job=%s pod=%s rank=%d exit=%d restart=%d left=%d", job, rep.pod_name,
                 rep.rank, rep.exit_code, rep.restart, rep.restarts_left)
        if self._on_report is not None:
            try:
                self._on_report(rep)
            except Exception:  # noqa: BLE001
                log.exception("heartbeat.on_report_failed job=%s", job)
        return rep

    def reports(self, namespace: str, job_name: str) -> list[LauncherReport]:
        with self._lock:
            return list(self._reports.get((namespace, job_name), ()))

    def disconnected(self, job: JobKey, rank: int, stream: int = 0) -> None:
        """The stream that last spoke for ``rank`` ended: its process exited or lost the
        operator. A newer stream for the rank (the process restarted, the rank moved to
        another pod) is not touched. Listeners hear of it (last_seen unchanged)."""
        with self._lock:
            key = (job.namespace, job.name, rank)
            status = self._workers.get(key)
            if status is None or status.stream != stream:
                return
            status = self._workers[key] = replace(status, connected=False)
        self._notify(status)

    def _notify(self, status: WorkerStatus) -> None:
        """Tell the listener (outside the lock); a listener must not kill the stream."""
        if self._on_update is None:
            return
        try:
            self._on_update(status)
        except Exception:  # noqa: BLE001
            log.exception("heartbeat.on_update_failed job=%s/%s rank=%d", status.namespace, status.job_name, status.rank)

    def take_commands(self, job: JobKey, rank: int, incarnation: int) -> list[pb.OperatorCommand]:
        """Commands for this job not yet delivered to this (rank, incarnation).
        A command every rank has answered (DONE/REJECTED) is not sent again (a
        restarted worker does not redo it); its acks stay readable until it expires."""
        now = self._clock()
        out = []
        with self._lock:
            world = max((w.world_size for (ns, n, _), w in self._workers.items()
                         if (ns, n) == (job.namespace, job.name)), default=0)
            for rid, cmd in list(self._commands.items()):
                if cmd.expires_at < now:
                    del self._commands[rid]
                    continue
                if cmd.job != job or (rank, incarnation) in cmd.delivered or cmd.finished(world):
                    continue
                cmd.delivered.add((rank, incarnation))
                out.append(cmd.proto)
        return out

    def wait(self, timeout: float) -> None:
        with self._lock:
            self._lock.wait(timeout)

    # ---- operator side
    def queue_command(self, namespace: str, job_name: str, command: int, *, reason: str = "",
                      ttl_s: float = 600.0) -> str:
        """Queue a command for every rank of the job; returns its request id."""
        if command not in (CHECKPOINT_NOW, STOP_AFTER_CHECKPOINT):
            raise ValueError(f"command must be CHECKPOINT_NOW or STOP_AFTER_CHECKPOINT, got {command!r}")
        rid = uuid.uuid4().hex
        proto = pb.OperatorCommand(type=command, request_id=rid, reason=reason)
        proto.issued_at.GetCurrentTime()
        with self._lock:
            self._commands[rid] = _Command(JobKey(namespace, job_name), proto, self._clock() + ttl_s)
            self._lock.notify_all()
        log.info("heartbeat.command_queued job=%s/%s type=%s request_id=%s",
                 namespace, job_name, pb.CommandType.Name(command), rid)
        return rid

    def command_acks(self, request_id: str) -> dict[int, str]:
        with self._lock:
            cmd = self._commands.get(request_id)
            return {r: a[0] for r, a in cmd.acks.items()} if cmd else {}

    def workers(self, namespace: str, job_name: str) -> list[WorkerStatus]:
        with self._lock:
            return sorted((w for (ns, n, _), w in self._workers.items() if ns == namespace and n == job_name),
                          key=lambda w: w.rank)

    def forget_job(self, namespace: str, job_name: str) -> None:
        job = JobKey(namespace, job_name)
        with self._lock:
            for key in [k for k in self._workers if k[:2] == (namespace, job_name)]:
                del self._workers[key]
            self._reports.pop((namespace, job_name), None)
            self.launchers.forget(namespace, job_name)
            for rid in [r for r, c in self._commands.items() if c.job == job]:
                del self._commands[rid]


class HeartbeatServicer(pb_grpc.HeartbeatServicer):
    def __init__(self, registry: HeartbeatRegistry, token_lookup: TokenLookup, poll_s: float = 0.5):
        self.registry = registry
        self.token_lookup = token_lookup
        self.poll_s = poll_s

    def _job(self, context) -> JobKey:
        """The job the call's token is for; aborts the call (UNAUTHENTICATED) without one."""
        try:
            return authenticate(context.invocation_metadata(), self.token_lookup)
        except AuthError as exc:
            log.warning("heartbeat.unauthenticated peer=%s reason=%s", context.peer(), exc)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort raises; this line is never reached

    def LauncherAlive(self, request, context):
        """A pod's launcher is alive (launcher_beats.py); the token must be its job's."""
        job = self._job(context)
        ident = request.identity
        if not identity_matches(job, ident.namespace, ident.job_name):
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"token is for job {job}, message speaks for {ident.namespace}/{ident.job_name}")
        self.registry.launcher_alive(job, ident)
        return pb.LauncherKeepaliveReply()

    def Stream(self, request_iterator, context):
        job = self._job(context)
        seen: dict = {}
        problem: list[str] = []
        ended = threading.Event()
        stream = next(_STREAMS)

        def read() -> None:
            try:
                for msg in request_iterator:
                    ident = msg.identity
                    if not identity_matches(job, ident.namespace, ident.job_name):
                        problem.append(f"token is for job {job}, message speaks for "
                                       f"{ident.namespace}/{ident.job_name}")
                        break
                    if msg.HasField("launcher"):  # a launcher's own stream: one report, no commands
                        self.registry.report(job, msg)
                        continue
                    if "rank" in seen and seen["rank"] != ident.rank:
                        problem.append(f"rank changed within one stream ({seen['rank']} -> {ident.rank})")
                        break
                    seen["rank"], seen["incarnation"] = ident.rank, ident.incarnation
                    self.registry.observe(job, msg, stream=stream)
            except grpc.RpcError:
                pass  # client went away
            except Exception as exc:  # noqa: BLE001
                problem.append(f"bad message: {exc!r}")
            finally:
                ended.set()
                with self.registry._lock:
                    self.registry._lock.notify_all()

        reader = threading.Thread(target=read, name=f"hb-read-{job}", daemon=True)
        reader.start()
        try:
            while context.is_active() and not ended.is_set():
                if "rank" in seen:
                    yield from self.registry.take_commands(job, seen["rank"], seen["incarnation"])
                self.registry.wait(self.poll_s)
            if problem:
                log.warning("heartbeat.rejected job=%s peer=%s reason=%s", job, context.peer(), problem[0])
                context.abort(grpc.StatusCode.PERMISSION_DENIED, problem[0])
        finally:
            if "rank" in seen:
                self.registry.disconnected(job, seen["rank"], stream)


class HeartbeatServer:
    """A gRPC server hosting the Heartbeat service; start/stop from any thread."""

    def __init__(self, token_lookup: TokenLookup, address: str = "127.0.0.1:0", *,
                 registry: HeartbeatRegistry | None = None, max_workers: int = 512):
        self.registry = registry or HeartbeatRegistry()
        self.address = address
        self._token_lookup = token_lookup
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self.port: int | None = None

    def start(self) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers,
                                                        thread_name_prefix="hb"))
        pb_grpc.add_HeartbeatServicer_to_server(HeartbeatServicer(self.registry, self._token_lookup), server)
        port = server.add_insecure_port(self.address)
        if port == 0:
            raise RuntimeError(f"cannot listen on {self.address!r} (port in use or bad address)")
        server.start()
        self._server, self.port = server, port
        log.info("heartbeat.listening address=%s port=%d", self.address, port)
        return port

    def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    # conveniences
    def workers(self, namespace: str, job_name: str) -> list[WorkerStatus]:
        return self.registry.workers(namespace, job_name)

    def queue_command(self, namespace: str, job_name: str, command: int, **kw) -> str:
        return self.registry.queue_command(namespace, job_name, command, **kw)

    def command_acks(self, request_id: str) -> dict[int, str]:
        return self.registry.command_acks(request_id)

    def __enter__(self) -> "HeartbeatServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
