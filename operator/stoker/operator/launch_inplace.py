"""In-place restarts, the launcher's part (issue 12): a fixed-size job's trainer that exits
with an error is started again inside its pod instead of failing the pod.

torchrun's agent does the restart (``--max-restarts=N``, rendered from
spec.failurePolicy.inPlaceRestarts): it stops the pod's other trainers, joins a new
rendezvous round, and the agents of the other pods see the waiting node and restart
theirs too, so every rank starts again from the newest committed checkpoint, in the same
pods and incarnation. When its restarts are used up the agent gives up, the pod fails
and the operator restarts the job as a new incarnation (the old path).

What this module adds: the operator must know, and must see the launcher alive. ``hook_agent``
wraps the agent's monitor so that the moment it sees a failed trainer it will restart,
``Reporter`` sends one ``WorkerMessage.launcher`` over a heartbeat stream of its own (rank,
exit code, last step, error, when), in a background thread: the restart does not wait for it;
``Reporter.keep_alive`` says the launcher is alive every heartbeat interval (``LauncherAlive``),
so a stopped or stuck launcher is seen (heartbeat_checks.frozen_launcher). A launcher that
cannot report (no gRPC in a bring-your-own image, no operator address) must not restart
silently: ``without_in_place`` turns its restarts off, and the pod fails as before.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Mapping

from stoker.common import env as E

RESTARTS_FLAG = "--max-restarts"
# The trainer's own verdicts (stoker.worker.health_guard): training diverged (87), paused by
# spec.health (88). A restart would meet the same state: the pod fails and the operator decides.
FINAL_EXIT_CODES = frozenset({87, 88})
ERROR_CHARS = 2000
SEND_TIMEOUT_S = 5.0


# torch's dynamic rendezvous waits a fixed second between polls of the store while a round fills
# (dynamic_rendezvous._RendezvousOpExecutor.run, _Action.SYNC): after a restart in place each agent
# may lose up to that second, twice (join, then completion). A small job polls faster: the poll
# interval is nodes / STORE_POLLS_PER_S, at least RDZV_POLL_MIN_S and at most torch's second, so
# the store never sees more than STORE_POLLS_PER_S polls a second below 100 nodes, nor more than
# torch's own rate above.
RDZV_POLL_MIN_S = 0.1
STORE_POLLS_PER_S = 100.0


def rendezvous_poll_s(args: list[str]) -> float:
    """The poll interval for the job's most nodes (torchrun's ``--nnodes=MIN:MAX``)."""
    spec = next((a.split("=", 1)[1] for a in args if a.startswith("--nnodes=")), None)
    if spec is None and "--nnodes" in args[:-1]:
        spec = args[args.index("--nnodes") + 1]
    try:
        most = int(str(spec).split(":")[-1])
    except ValueError:
        return 1.0
    return min(1.0, max(RDZV_POLL_MIN_S, most / STORE_POLLS_PER_S))


def quick_rendezvous_polls(poll_s: float) -> bool:
    """Wait ``poll_s`` instead of torch's one second between rendezvous polls, and read the shared
    rendezvous state again after ``poll_s`` instead of serving it from a one-second cache (other
    delays, e.g. the compare-and-set backoff, are left alone). The cache made a polling agent see a
    new round, and a running agent see a node waiting (``num_nodes_waiting``, every monitor interval),
    up to a second late: a survivor's torchrun stopped its trainer 0.9 s after the crashed pod's
    agent had joined the next round (bench_recovery, 2026-12-04). False if torch's module no longer
    has either."""
    try:
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr
    except ImportError:
        return False
    orig = getattr(dr, "_delay", None)
    holder = getattr(dr, "_BackendRendezvousStateHolder", None)
    if orig is None or holder is None:
        return False
    orig = getattr(orig, "stoker_orig", orig)
    init = getattr(holder.__init__, "stoker_orig", holder.__init__)

    def delay(seconds: float | tuple[float, float]) -> None:
        orig(poll_s if seconds == 1 else seconds)

    def holder_init(self, backend, settings, cache_duration=1) -> None:
        init(self, backend, settings, poll_s if cache_duration == 1 else cache_duration)

    delay.stoker_orig = orig  # type: ignore[attr-defined]
    holder_init.stoker_orig = init  # type: ignore[attr-defined]
    dr._delay = delay
    holder.__init__ = holder_init
    return True


def requested(environ: Mapping[str, str]) -> int:
    """The in-place restarts the operator asked for (0: none)."""
    try:
        return max(0, int(environ.get(E.IN_PLACE_RESTARTS) or 0))
    except ValueError:
        return 0


def without_in_place(args: list[str]) -> list[str]:
    """torchrun's arguments with ``--max-restarts=0``: every trainer failure fails the pod."""
    out = [a for a in args if not a.startswith(RESTARTS_FLAG + "=")]
    return [f"{RESTARTS_FLAG}=0", *out] if len(out) != len(args) else out


def failure_report(rank: int, exitcode: int, message: str | dict | None, step: int | None, restart: int,
                   left: int, failed_at: float) -> dict[str, Any]:
    """What the launcher tells the operator about one failed trainer (the proto's fields).
    ``message``: torchelastic's ``ProcessFailure.message``, a dict (``message``, ``extraInfo``)
    where the trainer's ``@record`` wrote the error file, else a string."""
    code = 128 - exitcode if exitcode < 0 else exitcode if 0 < exitcode < 256 else 1
    return {"rank": int(rank), "exit_code": code, "step": -1 if step is None else int(step),
            "error": error_text(message)[-ERROR_CHARS:], "restart": restart, "restarts_left": left,
            "failed_at": failed_at}


def error_text(message: str | dict | None) -> str:
    """The error's text with its traceback where the error file has one."""
    if isinstance(message, dict):
        info = message.get("extraInfo") or {}
        return str(info.get("py_callstack") or message.get("message") or "")
    return str(message or "")


class Reporter:
    """Sends launcher reports to the operator's heartbeat service (gRPC, imported here only)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        import grpc

        from stoker.common.auth import client_metadata
        from stoker.common.proto import stoker_pb2 as pb
        from stoker.common.proto import stoker_pb2_grpc as pb_grpc

        self._pb = pb
        self._env = dict(environ)
        self._metadata = client_metadata(environ[E.JOB_NAMESPACE], environ[E.JOB_NAME], environ[E.JOB_TOKEN])
        self._channel = grpc.insecure_channel(environ[E.OPERATOR_ADDR])
        self._stub = pb_grpc.HeartbeatStub(self._channel)
        self.sent: list[dict[str, Any]] = []

    @classmethod
    def create(cls, environ: Mapping[str, str]) -> "Reporter | None":
        """A reporter, or None when this pod cannot report (says why on stderr)."""
        missing = [k for k in (E.OPERATOR_ADDR, E.JOB_TOKEN, E.JOB_NAMESPACE, E.JOB_NAME) if not environ.get(k)]
        why = f"{', '.join(missing)} not set" if missing else ""
        if not why:
            try:
                return cls(environ)
            except Exception as e:  # noqa: BLE001 - missing, or too old for the generated code (a version check)
                why = f"cannot load the heartbeat client ({type(e).__name__}: {e})"
        print(f"stoker launch: in-place restarts off: {why}; a failed trainer fails the pod",
              file=sys.stderr, flush=True)
        return None

    def _identity(self, rank: int = 0) -> Any:
        env = self._env
        return self._pb.JobIdentity(namespace=env[E.JOB_NAMESPACE], job_name=env[E.JOB_NAME],
                                    job_uid=env.get(E.JOB_UID, ""), incarnation=int(env.get(E.INCARNATION) or 0),
                                    rank=rank, replica_index=int(env.get(E.REPLICA_INDEX) or 0),
                                    pod_name=env.get(E.POD_NAME, ""), node_name=env.get(E.NODE_NAME, ""))

    def message(self, report: Mapping[str, Any]) -> Any:
        pb = self._pb
        ident = self._identity(report["rank"])
        msg = pb.WorkerMessage(identity=ident, seq=1, step=report["step"])
        msg.sent_at.GetCurrentTime()
        r = msg.launcher
        r.exit_code, r.step, r.error = report["exit_code"], report["step"], report["error"]
        r.restart, r.restarts_left = report["restart"], report["restarts_left"]
        r.failed_at.FromNanoseconds(int(report["failed_at"] * 1e9))
        return msg

    def alive_message(self) -> Any:
        """The launcher's keepalive (``LauncherAlive``): who it is."""
        return self._pb.LauncherKeepalive(identity=self._identity())

    def keep_alive(self, interval_s: float, stop: threading.Event | None = None) -> threading.Thread:
        """Say the launcher is alive every ``interval_s`` (one unary call each: no stream or server
        thread held), in a daemon thread, so a stopped or stuck launcher goes quiet and the operator
        sees it (heartbeat_checks.frozen_launcher). An operator without the call (an older version)
        answers UNIMPLEMENTED: then it stops, and says so once."""
        import grpc

        halt = stop or threading.Event()

        def run() -> None:
            while not halt.is_set():
                try:
                    self._stub.LauncherAlive(self.alive_message(), metadata=self._metadata, timeout=SEND_TIMEOUT_S)
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        print("stoker launch: the operator takes no launcher keepalives (an older version); "
                              "a frozen launcher is then found only by the in-place deadline", file=sys.stderr,
                              flush=True)
                        return
                except Exception:  # noqa: BLE001 - the operator restarts, or is not there yet: try again
                    pass
                halt.wait(interval_s)

        thread = threading.Thread(target=run, name="stoker-launcher-alive", daemon=True)
        thread.start()
        return thread

    def send(self, report: Mapping[str, Any]) -> None:
        """One report on a stream of its own, in a background thread (never blocks the restart)."""
        def run() -> None:
            try:
                for _ in self._stub.Stream(iter([self.message(report)]), metadata=self._metadata,
                                           timeout=SEND_TIMEOUT_S):
                    pass
                self.sent.append(dict(report))
            except Exception as e:  # noqa: BLE001 - the pod watch still shows a failure that ends the pod
                print(f"stoker launch: could not report the trainer's exit to the operator: {e}",
                      file=sys.stderr, flush=True)

        threading.Thread(target=run, name="stoker-inplace-report", daemon=True).start()


def _wrap_monitor(after: Callable[[Any, Any, Any, Any], Any]) -> bool:
    """Wrap torchrun's agent monitor: ``after(agent, result, worker_group, api)`` returns the result
    the agent acts on (``api``: torch's agent module, RunResult and WorkerState). False where the
    agent cannot be wrapped."""
    try:
        from torch.distributed.elastic.agent.server import api
        from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    except ImportError:
        return False
    monitor = LocalElasticAgent._monitor_workers

    def watched(self: Any, worker_group: Any) -> Any:
        return after(self, monitor(self, worker_group), worker_group, api)

    LocalElasticAgent._monitor_workers = watched
    return True


def hook_agent(on_failure: Callable[[Any, Any], None]) -> bool:
    """Call ``on_failure(agent, run_result)`` when torchrun's agent sees failed trainers it is about
    to restart in place (restarts left); a trainer exiting with one of ``FINAL_EXIT_CODES`` ends
    the agent's restarts instead. False where the agent cannot be wrapped."""
    def after(agent: Any, result: Any, _group: Any, api: Any) -> Any:
        if result.state in (api.WorkerState.FAILED, api.WorkerState.UNHEALTHY) and agent._remaining_restarts > 0:
            if any(f.exitcode in FINAL_EXIT_CODES for f in (result.failures or {}).values()):
                agent._remaining_restarts = 0
            else:
                on_failure(agent, result)
        return result
    return _wrap_monitor(after)


def forgive_finished(finished: Callable[[int], bool], log: Callable[[str], None]) -> bool:
    """A trainer that said it finished training and then died on its way out (gloo's or NCCL's
    thread aborting at interpreter exit: SIGABRT after the last step) lost no work: when every
    failure torchrun's agent sees is such a rank, the group counts as succeeded -- no in-place
    restart, no report, the pod exits 0 (CI: such an exit after step 1000 of 1000 was restarted
    in place and counted as a WorkerKilled incident). Installed before ``hook_agent``."""
    def after(_agent: Any, result: Any, group: Any, api: Any) -> Any:
        failures = result.failures or {}
        if result.state != api.WorkerState.FAILED or not failures or not all(finished(r) for r in failures):
            return result
        log(f"stoker launch: rank(s) {', '.join(map(str, sorted(failures)))} exited with "
            f"{', '.join(str(f.exitcode) for f in failures.values())} after finishing training; not a failure")
        return api.RunResult(state=api.WorkerState.SUCCEEDED,
                             return_values={w.global_rank: None for w in group.workers})
    return _wrap_monitor(after)


def first_failure(result: Any) -> tuple[int, Any] | None:
    """(global rank, ProcessFailure) of the failure that came first (as ChildFailedError does)."""
    if not result.failures:
        return None
    return min(result.failures.items(), key=lambda kv: kv[1].timestamp)


def install(args: list[str], environ: Mapping[str, str], step_of: Callable[[int], int | None],
            log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> list[str]:
    """Arguments for torchrun: unchanged (and the agent hooked to report) when in-place restarts
    were asked for and can be reported; ``--max-restarts=0`` when they cannot be."""
    wanted = requested(environ)
    if wanted <= 0:
        return args
    reporter = Reporter.create(environ)
    if reporter is None:
        return without_in_place(args)

    def on_failure(agent: Any, result: Any) -> None:
        try:
            report_failure(agent, result)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be made must not stop the restart
            log(f"stoker launch: could not report the failure to the operator ({type(exc).__name__}: {exc}); "
                f"restarting in place all the same")

    def report_failure(agent: Any, result: Any) -> None:
        first = first_failure(result)
        if first is None:
            return
        rank, failure = first
        spec = agent._worker_group.spec
        restart = spec.max_restarts - agent._remaining_restarts + 1
        report = failure_report(rank, int(failure.exitcode), failure.message if failure.error_file_data else "",
                                step_of(rank), restart, agent._remaining_restarts - 1, time.time())
        log(f"stoker launch: worker rank {rank} exited with {failure.exitcode}; restarting the workers in place "
            f"(restart {restart} of {spec.max_restarts})")
        reporter.send(report)

    if not hook_agent(on_failure):
        return without_in_place(args)
    reporter.keep_alive(keepalive_interval(environ))
    return args


def keepalive_interval(environ: Mapping[str, str]) -> float:
    """The launcher's keepalive interval: the trainers' heartbeat interval (1 s unless set)."""
    try:
        value = float(environ.get(E.HEARTBEAT_INTERVAL) or 1.0)
    except ValueError:
        return 1.0
    return value if value > 0 else 1.0
