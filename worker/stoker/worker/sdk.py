"""Stoker worker SDK: report progress to the operator and receive its commands.

Works in any torchrun script; without ``STOKER_OPERATOR_ADDR`` it is a no-op.

    from stoker.worker.sdk import Session, any_rank

    with Session.from_env() as session:          # starts the heartbeat thread
        for step in range(start, total):
            loss = train_step()
            session.step(step, loss=loss, tokens_per_second=tps)   # cheap: stores only
            if any_rank(session.checkpoint_requested()):          # all ranks agree
                ckpt.save(step, state); ckpt.wait()
                session.report_checkpoint(ckpt.last_result)        # acks the command
                if session.stop_requested():
                    break
        session.set_phase("FINISHED")

A background thread streams the latest state every
``STOKER_HEARTBEAT_INTERVAL_SECONDS`` (default 5). If the operator is
unreachable, training goes on and the thread reconnects with backoff.
Identity comes from the ``STOKER_*`` variables the operator sets
(``stoker.common.env``) and torchrun's ``RANK`` / ``WORLD_SIZE``.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from stoker.common import env, last_step
from stoker.common.proto import stoker_pb2 as pb
from stoker.worker.process_exit import exit_process  # noqa: F401  (part of the SDK)

log = logging.getLogger("stoker.worker.sdk")

_METRIC_FIELDS = {
    "loss": float, "tokens_per_second": float, "grad_norm": float, "memory_bytes": int,
    "step_time_seconds": float,
}
_PHASES = {name: pb.Phase.Value(name) for name in pb.Phase.keys()}
KEEP_ANOMALIES = 8


def _ts(msg, t: float) -> None:
    msg.FromNanoseconds(int(t * 1e9))


class Session:
    """One worker's connection to the operator (see module docstring).

    ``step()``, ``checkpoint_requested()`` and ``stop_requested()`` only touch
    memory; all network I/O happens on the background thread.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        namespace: str = "",
        job_name: str = "",
        job_uid: str = "",
        incarnation: int = 0,
        rank: int = 0,
        world_size: int = 1,
        replica_index: int = 0,
        pod_name: str = "",
        node_name: str = "",
        interval_s: float = 1.0,
        journal_dir: str | None = None,
        last_step_dir: str | None = None,
    ) -> None:
        self.identity = pb.JobIdentity(
            namespace=namespace, job_name=job_name, job_uid=job_uid, incarnation=incarnation, rank=rank,
            world_size=world_size, replica_index=replica_index, pod_name=pod_name, node_name=node_name,
        )
        self.address = address or None
        if self.address and not token:
            log.error("sdk.disabled reason=no token: set %s (the job Secret's token) next to %s",
                      env.JOB_TOKEN, env.OPERATOR_ADDR)
            self.address = None
        if self.address and not (namespace and job_name):
            log.error("sdk.disabled reason=no job identity: set %s and %s", env.JOB_NAMESPACE, env.JOB_NAME)
            self.address = None
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds (got {interval_s}); "
                             f"check {env.HEARTBEAT_INTERVAL}")
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._started_at = time.time()
        self._step = -1
        self._step_at = 0.0
        self._metrics: dict[str, Any] = {}
        self._ckpt_metrics: dict[str, Any] = {}
        self._phase = pb.STARTING
        self._error = ""
        self._acks: list[pb.CommandAck] = []
        self._ckpt_requests: dict[str, int] = {}  # request id -> step when it arrived
        self._stop_request: str | None = None
        self._anomalies: list[pb.Anomaly] = []  # the latest few, sent in every message
        self._finish_reason = ""
        self._activity: tuple[str, float] = ("", 0.0)  # (what, since: time.monotonic())
        self._split = ActivitySplit()  # seconds per activity since the last step()
        self._reporter = None
        self._journal = None
        self._last_step = last_step.open_writer(last_step_dir, rank)
        if journal_dir:
            from .journal import StepJournal

            self._journal = StepJournal(journal_dir, job=job_name, incarnation=incarnation, pod=pod_name, rank=rank)
        if self.address:
            from .reporter import Reporter

            self._reporter = Reporter(self.identity, self.address, token or "", interval_s, self._build_message,
                                      self._on_command)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Session":
        e = os.environ if environ is None else environ

        def num(name: str, default, conv=int):
            raw = e.get(name, "")
            try:
                return conv(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        kwargs: dict[str, Any] = dict(
            address=e.get(env.OPERATOR_ADDR), token=e.get(env.JOB_TOKEN),
            namespace=e.get(env.JOB_NAMESPACE, ""), job_name=e.get(env.JOB_NAME, ""),
            job_uid=e.get(env.JOB_UID, ""), incarnation=num(env.INCARNATION, 0),
            rank=num("RANK", 0), world_size=num("WORLD_SIZE", 1),
            replica_index=num(env.REPLICA_INDEX, 0), pod_name=e.get(env.POD_NAME, ""),
            node_name=e.get(env.NODE_NAME, ""), interval_s=num(env.HEARTBEAT_INTERVAL, 1.0, float),
            journal_dir=e.get(env.STEP_JOURNAL_DIR) or None, last_step_dir=e.get(env.LAST_STEP_DIR) or None,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # ------------------------------------------------------------ lifecycle
    @property
    def enabled(self) -> bool:
        return self._reporter is not None

    def start(self) -> "Session":
        if self._reporter is not None and not self._reporter._thread.is_alive():
            self._reporter.start()
        return self

    def close(self, timeout: float = 3.0) -> None:
        """Send a final heartbeat (best effort) and stop the thread."""
        if self._reporter is not None:
            self._reporter.close(timeout)
        if self._journal is not None:
            self._journal.close()

    def __enter__(self) -> "Session":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._phase not in (pb.FINISHED, pb.FAILED):
            self.set_phase("FAILED", error=f"{exc_type.__name__}: {exc}")
        self.close()

    # ------------------------------------------------------------- reporting
    def step(self, step: int, **metrics: float) -> None:
        """Record a completed step and its metrics (loss, tokens_per_second,
        grad_norm, memory_bytes, step_time_seconds, or any other number). Where the script
        says what it does (``set_activity``), the seconds spent since the previous step in
        ``data``, ``compute`` and ``collective`` go with them (``data_wait_seconds``,
        ``compute_seconds``, ``collective_seconds``) unless it passed those itself."""
        metrics = {**self._split.take(self._activity[0], time.monotonic()), **metrics}
        with self._lock:
            self._step = step
            self._step_at = time.time()
            if metrics:
                self._metrics.update(metrics)
            if self._phase in (pb.STARTING, pb.RESTORING):
                self._phase = pb.TRAINING
        if self._last_step is not None:
            self._last_step.write(step)
        if self._journal is not None:
            self._journal.record("step", step)

    def set_phase(self, phase: str | int, error: str = "", reason: str = "") -> None:
        """STARTING, RESTORING, TRAINING, CHECKPOINTING, FINISHED or FAILED;
        sent at once. ``reason``: with FINISHED before the last step, why (the
        operator's Succeeded reason is its first word, e.g. "EarlyStopped: ...")."""
        value = _PHASES.get(phase) if isinstance(phase, str) else phase
        if value is None or value == pb.PHASE_UNSPECIFIED:
            raise ValueError(f"unknown phase {phase!r}; use one of {sorted(set(_PHASES) - {'PHASE_UNSPECIFIED'})}")
        with self._lock:
            self._phase, self._error = value, error
            self._finish_reason = reason if value == pb.FINISHED else ""
        if value == pb.FINISHED and self._last_step is not None:
            self._last_step.finish()   # the launcher: a crash on the way out lost no work
        self._wake()

    def set_activity(self, name: str) -> None:
        """What the trainer does now: ``data`` (waiting for its batch), ``compute``, ``collective``
        (waiting in a collective with the other ranks) or ``checkpoint``; ``""``: not saying. Stores
        only (sent with the next heartbeat, with how long it has lasted). The operator calls a
        collective stuck when every rank has waited in one for long, while a long compute, data or
        checkpoint phase on any rank is not (docs/recovery.md)."""
        if name != self._activity[0]:
            now = time.monotonic()
            self._split.close(self._activity[0], now)
            self._activity = (name, now)

    def report_checkpoint(self, result: Any) -> None:
        """Report a save outcome (a ``checkpoint.SaveResult`` or anything with
        step, ok, duration_s, bytes, error); thread-safe, so it can be the
        manager's ``on_result``. A committed save acknowledges the pending
        CHECKPOINT_NOW requests that arrived at or before its step as DONE (a
        failed one as REJECTED); requests that arrived later stay pending."""
        if result is None:
            return
        if self._journal is not None:
            failed = {} if result.ok else {"error": str(getattr(result, "error", None) or "")[:300]}
            self._journal.record("checkpoint", int(result.step), ok=bool(result.ok), **failed)
        with self._lock:
            self._ckpt_metrics.update(checkpoint_step=int(result.step), checkpoint_ok=bool(result.ok),
                                      checkpoint_duration_seconds=float(result.duration_s))
            if result.ok:
                self._ckpt_metrics.update(checkpoint_bytes=int(result.bytes), last_committed_step=int(result.step))
            state = pb.DONE if result.ok else pb.REJECTED
            message = f"committed step {result.step}" if result.ok else f"save failed: {result.error}"
            # only a save taken at or after the step a request arrived answers it
            answered = [rid for rid, at in self._ckpt_requests.items() if int(result.step) >= at]
            for rid in answered:
                self._acks.append(pb.CommandAck(request_id=rid, type=pb.CHECKPOINT_NOW, state=state,
                                                message=message, step=int(result.step)))
                del self._ckpt_requests[rid]
            if self._phase == pb.CHECKPOINTING:
                self._phase = pb.TRAINING
        self._wake()

    def journal_commit(self, step: int) -> None:
        """The step journal's record of a commit, made by the checkpoint coordinator as its
        ``COMMITTED`` marker is stored (only with ``STOKER_STEP_JOURNAL_DIR``)."""
        if self._journal is not None:
            self._journal.record("committed", int(step))

    def journal_resume_from_memory(self, step: int) -> None:
        """The step journal's record of a restore from the pod's in-memory tier (not a committed
        S3 checkpoint: ``set_last_committed_step`` is not called for it)."""
        if self._journal is not None:
            self._journal.record("resumed_from_memory", int(step))

    def journal_world(self, world: str) -> None:
        """Name, on every later step-journal line, the processes this one trains with (the built-in
        trainer: rank 0's pod and pid, gathered, the same on every rank): a journal then tells the
        processes of a restart in place (same incarnation) from those before it."""
        if self._journal is not None:
            self._journal.identity["world"] = str(world)

    def set_last_committed_step(self, step: int | None) -> None:
        """E.g. after a restore, so the operator knows where the job resumed."""
        if step is None:
            return
        if self._journal is not None:
            self._journal.record("resumed", int(step))
        with self._lock:
            self._ckpt_metrics["last_committed_step"] = int(step)

    def report_anomaly(self, *, step: int, kind: str, statistic: str, action: str, rolled_back_to: int = -1,
                       skip_from: int = 0, skip_to: int = 0, batches_skipped: int = 0, rollbacks: int = 0) -> None:
        """A training anomaly and what was done about it (stoker.worker.health); the operator
        records it as an incident. Kept in every message while among the latest ``KEEP_ANOMALIES``."""
        with self._lock:
            seq = (self._anomalies[-1].seq if self._anomalies else 0) + 1
            self._anomalies.append(pb.Anomaly(seq=seq, step=step, kind=kind, statistic=statistic, action=action,
                                              rolled_back_to=rolled_back_to, skip_from=skip_from, skip_to=skip_to,
                                              batches_skipped=batches_skipped, rollbacks=rollbacks))
            del self._anomalies[:-KEEP_ANOMALIES]
        if self._journal is not None:
            self._journal.record("anomaly", int(step), kind=kind, action=action, rolled_back_to=rolled_back_to)
        self._wake()

    # -------------------------------------------------------------- commands
    def checkpoint_requested(self) -> bool:
        """True while a CHECKPOINT_NOW (or STOP_AFTER_CHECKPOINT) awaits a save."""
        return bool(self._ckpt_requests)

    def stop_requested(self) -> bool:
        """True once STOP_AFTER_CHECKPOINT arrived: save, then exit cleanly."""
        return self._stop_request is not None

    def _on_command(self, cmd: pb.OperatorCommand) -> None:
        log.info("sdk.command type=%s request_id=%s reason=%s",
                 pb.CommandType.Name(cmd.type), cmd.request_id, cmd.reason)
        with self._lock:
            if cmd.type in (pb.CHECKPOINT_NOW, pb.STOP_AFTER_CHECKPOINT):
                self._ckpt_requests.setdefault(cmd.request_id, self._step)
                if cmd.type == pb.STOP_AFTER_CHECKPOINT:
                    self._stop_request = cmd.request_id
                state, message = pb.RECEIVED, ""
            else:
                state, message = pb.REJECTED, f"unknown command type {cmd.type}"
            self._acks.append(pb.CommandAck(request_id=cmd.request_id, type=cmd.type, state=state,
                                            message=message, step=self._step))
        self._wake()

    # ------------------------------------------------------------- internals
    def _wake(self) -> None:
        if self._reporter is not None:
            self._reporter.wake()

    def _build_message(self, seq: int) -> pb.WorkerMessage:
        with self._lock:
            step, step_at, phase, error = self._step, self._step_at, self._phase, self._error
            metrics = dict(self._metrics)
            metrics.update(self._ckpt_metrics)
            acks, self._acks = self._acks, []
            anomalies, finish_reason = list(self._anomalies), self._finish_reason
        activity, since = self._activity
        msg = pb.WorkerMessage(identity=self.identity, seq=seq, step=step, phase=phase, error=error, acks=acks,
                               anomalies=anomalies, finish_reason=finish_reason, activity=activity,
                               activity_seconds=time.monotonic() - since if activity else 0.0)
        now = time.time()
        _ts(msg.sent_at, now)
        _ts(msg.started_at, self._started_at)
        if step_at:
            _ts(msg.step_at, step_at)
        m = msg.metrics
        for name, value in metrics.items():
            try:
                if name in ("checkpoint_bytes", "checkpoint_step", "last_committed_step", "memory_bytes"):
                    setattr(m, name, int(value))
                elif name == "checkpoint_ok":
                    m.checkpoint_ok = bool(value)
                elif name in _METRIC_FIELDS or name == "checkpoint_duration_seconds":
                    setattr(m, name, float(value))
                else:
                    m.extra[name] = float(value)
            except (TypeError, ValueError):
                pass  # a non-numeric metric is dropped, not fatal
        return msg


def any_rank(flag: bool, group=None) -> bool:
    """True on every rank if ``flag`` is True on any rank (one tiny all-reduce).
    Use it so all ranks act on an operator command at the same step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


class ActivitySplit:
    """Seconds per activity between two steps, from the ``set_activity`` calls: the step's
    compute / communication split. ``collective`` is the time a rank waits in collectives it
    calls outside the backward pass (and so for the slowest rank); gradient all-reduces that
    DDP or FSDP overlap with the backward pass count as compute."""

    REPORTED = {"data": "data_wait_seconds", "compute": "compute_seconds", "collective": "collective_seconds"}

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._mark: float | None = None  # when the current activity's uncounted part began

    def close(self, activity: str, now: float) -> None:
        """The current activity ends (or a step is taken) at ``now``."""
        if activity and self._mark is not None:
            self._seconds[activity] = self._seconds.get(activity, 0.0) + max(0.0, now - self._mark)
        self._mark = now

    def take(self, activity: str, now: float) -> dict[str, float]:
        """The reported activities' seconds since the last take (none if no activity was ever set)."""
        self.close(activity, now)
        seconds, self._seconds = self._seconds, {}
        if not seconds:
            return {}
        return {metric: seconds.get(name, 0.0) for name, metric in self.REPORTED.items()}
