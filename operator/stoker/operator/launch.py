"""`python -m stoker.operator.launch <torchrun arguments>`: torchrun, but the pod's
exit code is the failing worker's own exit code, and a SIGTERM leaves the trainer
time to checkpoint and stop first.

Plain torchrun exits 1 whatever its workers exited with, which would hide the
user's exit code from spec.failurePolicy.exitCodeRules. This runs torchrun's
own `main` in-process and turns its ChildFailedError into the root-cause
worker's exit code (a worker killed by signal N exits 128+N, like a shell), and
a signal to the agent itself (pod deletion) into 128+N as well.

SIGTERM (the kubelet's, at the start of a pod's grace period: preemption, eviction,
a node drain) is held for up to the grace period less a safety margin
(``drain_window``): the operator sees the pod being deleted and asks every
worker over the heartbeat stream to checkpoint and stop (STOP_AFTER_CHECKPOINT);
the workers exit 0 by themselves and so does this launcher. If they have not
stopped when the window ends, SIGTERM goes on to torchrun as before (it stops its
workers) and the job resumes from the last committed checkpoint. The hold
applies only where a drain can happen: the operator's heartbeat service and a
checkpoint URI are configured (``STOKER_OPERATOR_ADDR``, ``STOKER_CHECKPOINT_URI``)
and the pod's grace period is known (``STOKER_TERMINATION_GRACE_SECONDS``). The
operator deletes its own pods with a short grace period, so those are not held
in practice (the kubelet kills them when it ends).

A fixed-size job's trainer that exits with an error is restarted in place, and the operator
told at once, when the operator asked for it (``launch_inplace``).

Its workers die with it (``tie_workers``): a SIGKILLed launcher takes its trainers along
instead of leaving them training, and writing checkpoints, beside the next incarnation. A trainer
torchrun stops while it is frozen (SIGSTOP) is woken to act on the signal (``wake_on_close``), a hot
spare waits with its trainer warm and, if never needed, ends its pod cleanly (``launch_spare``), and
gRPC's fork handlers are off so starting a trainer cannot abort it (``no_grpc_fork_handlers``).

Runs inside the worker pod (needs torch); the operator only names it.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Mapping

from stoker.common import env as E
from stoker.common import last_step, rdzv_lock
from stoker.common.parent_death import die_with_parent

from . import launch_inplace, launch_spare, launch_warm

# The agent lost the rendezvous store (e.g. the operator restarted): not the
# user's fault: detection names it RendezvousLost (infrastructure).
EXIT_RENDEZVOUS_LOST = 86
# Left of the grace period after the hold: torchrun stops its workers, the pod exits
# before the kubelet's SIGKILL.
SAFETY_MARGIN_S = 5.0
# The operator starts a drain only with this much grace left (supervision.Settings.
# preemption_min_grace_s): with less, holding SIGTERM would only delay the stop.
MIN_DRAIN_GRACE_S = 10.0
_TORCHELASTIC_SIGNALS = "TORCHELASTIC_SIGNALS_TO_HANDLE"
_DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
_GRPC_FORK = "GRPC_ENABLE_FORK_SUPPORT"


def tie_workers(warm: bool = False) -> bool:
    """Start torchrun's workers with PR_SET_PDEATHSIG=SIGKILL. torchrun starts them in new
    sessions, so a launcher killed by SIGKILL (the OOM killer, a fault) left them running:
    where the launcher is the container's PID 1 the kernel ends them anyway, but not where
    it is not (an init wrapper, a shared process namespace, process nodes), and a chaos run
    saw orphaned trainers finish a job beside its next incarnation. Patches the ``Popen``
    torchrun's SubprocessHandler calls; False (nothing changed) where there is none. ``warm``:
    restarted trainers start from warm processes (``launch_warm``)."""
    try:
        from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler as handler
    except ImportError:
        return False
    popen = getattr(handler, "Popen", None)
    if popen is None or not sys.platform.startswith("linux"):
        return False
    launcher = os.getpid()

    def die_with_launcher() -> None:
        die_with_parent(signal.SIGKILL)
        if os.getppid() != launcher:  # it died before the line above
            os._exit(128 + signal.SIGKILL)

    def tied(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("preexec_fn", die_with_launcher)
        return popen(*args, **kwargs)

    handler.Popen = launch_warm.WarmPool(tied) if warm else tied
    return True


def warm_pool() -> launch_warm.WarmPool | None:
    """The ``WarmPool`` that starts this launcher's trainers (``tie_workers(warm=True)``), if any."""
    try:
        from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler as handler
    except ImportError:
        return None
    pool = getattr(handler, "Popen", None)
    return pool if isinstance(pool, launch_warm.WarmPool) else None


def wake_on_close() -> bool:
    """torchrun's agent stops trainers (a restart, a membership change) with SIGTERM and waits up to 30 s
    before SIGKILL. A SIGSTOPped (frozen) trainer never sees that SIGTERM, so every restart that had to
    stop one waited the whole 30 s (chaos: a trainer killed and its peer frozen 0-2 s later trained again
    after 32 s instead of 3). After the signal the process group gets SIGCONT, which delivers it.
    False (nothing changed) where torch's handler is not there."""
    try:
        from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler as handler
    except ImportError:
        return False
    cls = getattr(handler, "SubprocessHandler", None)
    if cls is None or not sys.platform.startswith("linux"):
        return False
    close = getattr(cls.close, "stoker_orig", cls.close)

    def close_and_wake(self: Any, death_sig: Any = None) -> None:
        close(self, death_sig)
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)
        except OSError:
            pass   # gone already

    close_and_wake.stoker_orig = close  # type: ignore[attr-defined]
    cls.close = close_and_wake
    return True


def no_grpc_fork_handlers(environ: dict[str, str] = os.environ) -> bool:
    """Turn gRPC's fork handlers off in this process (and, inherited, in its trainers) before gRPC is
    loaded. The launcher holds a gRPC channel (launch_inplace's reports) and starts trainers with a
    Python ``preexec_fn`` (``tie_workers``), so with a plain fork: gRPC's at-fork handler restarted
    its poller thread in the child, whose epoll descriptor the child then closed before exec, and
    the child aborted ("Epoll1Poller ... epoll_wait error: Bad file descriptor", SIGABRT) -- a
    trainer lost at start, 4 starts in 1000 under load (CI: an in-place restart no fault caused).
    False where the pod's own environment asks for fork support (left as it is)."""
    if environ.get(_GRPC_FORK, "0").strip().lower() in ("", "0", "false", "no"):
        environ[_GRPC_FORK] = "0"
        return True
    print(f"stoker launch: {_GRPC_FORK}={environ[_GRPC_FORK]} from the pod's environment; "
          "trainers may abort at start (gRPC's fork handlers and tie_workers' preexec_fn)", file=sys.stderr, flush=True)
    return False


def exit_code_of(exitcode: int) -> int:
    if exitcode < 0:
        return 128 + (-exitcode)
    return exitcode if 0 < exitcode < 256 else 1


def drain_window(env: Mapping[str, str], margin_s: float = SAFETY_MARGIN_S) -> float:
    """How long to hold SIGTERM (seconds; 0: pass it on at once)."""
    if not env.get(E.OPERATOR_ADDR) or not env.get(E.CHECKPOINT_URI):
        return 0.0  # nobody will ask the trainer to drain, or it cannot checkpoint
    try:
        grace = float(env.get(E.TERMINATION_GRACE) or 0)
    except ValueError:
        return 0.0
    if grace < MIN_DRAIN_GRACE_S:
        return 0.0
    return max(0.0, grace - margin_s)


class SigtermHold:
    """Holds the first SIGTERM for ``window_s`` seconds, then hands it to ``forward``
    (torchrun's own handler, which raises SignalException in the main thread). A
    second SIGTERM while holding is forwarded at once."""

    def __init__(self, window_s: float, forward: Callable[[int, Any], None],
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        self.window_s = window_s
        self.forward = forward
        self.log = log
        self.held_at: float | None = None
        self._release = False
        self._timer: threading.Timer | None = None

    def install(self, argv: list[str], has_flag: bool) -> list[str]:
        """Take SIGTERM from torchrun: it registers its handler for every signal in
        --signals-to-handle (older versions: $TORCHELASTIC_SIGNALS_TO_HANDLE) when it
        starts its workers. Returns torchrun's arguments."""
        signal.signal(signal.SIGTERM, self.on_sigterm)
        if not has_flag:
            names = [s.strip() for s in os.environ.get(_TORCHELASTIC_SIGNALS, _DEFAULT_SIGNALS).split(",")]
            os.environ[_TORCHELASTIC_SIGNALS] = ",".join(n for n in names if n and n != "SIGTERM")
            return argv
        if any(a.startswith(("--signals-to-handle", "--signals_to_handle")) for a in argv):
            return argv  # the user chose; SIGTERM stays theirs if they listed it
        return [f"--signals-to-handle={_DEFAULT_SIGNALS.replace('SIGTERM,', '')}", *argv]

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if self._release or self.held_at is not None:
            self.cancel()
            self.forward(signum, frame)
            return
        self.held_at = time.monotonic()
        self.log(f"stoker launch: SIGTERM held for up to {self.window_s:g}s so the trainer can checkpoint and stop")
        self._timer = threading.Timer(self.window_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self._release = True
        self.log(f"stoker launch: the trainer did not stop within {self.window_s:g}s; stopping torchrun")
        os.kill(os.getpid(), signal.SIGTERM)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def missing_program(e: OSError) -> int:
    """The trainer's program could not be started: say which and exit like a shell does
    (127: not found, 126: not executable), so the failure names the cause."""
    found = not isinstance(e, FileNotFoundError)
    print(f"stoker launch: cannot run {e.filename!r}: {e.strerror}"
          f"{'' if found else ' (not found on PATH or at that path)'}: "
          "fix spec.template.spec.containers[0].command", file=sys.stderr, flush=True)
    return 126 if found else 127


def _step_dir() -> str | None:
    """A private folder for the trainers' last steps (``stoker.common.last_step``), named to
    them in the environment they inherit; None where no temporary folder can be made."""
    try:
        path = tempfile.mkdtemp(prefix="stoker-steps-")
    except OSError:
        return None
    os.environ[E.LAST_STEP_DIR] = path
    return path


def main(argv: list[str] | None = None) -> int:
    no_grpc_fork_handlers()   # first: before anything loads gRPC
    from torch.distributed.elastic.multiprocessing.api import SignalException, _terminate_process_handler
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import main as torchrun_main

    args = list(sys.argv[1:] if argv is None else argv)
    hold = None
    window = drain_window(os.environ)
    if window > 0:
        hold = SigtermHold(window, _terminate_process_handler)
        args = hold.install(args, "--signals-to-handle" in get_args_parser()._option_string_actions)
    steps = _step_dir()
    args, forwarder = rdzv_lock.lock_args(args, os.environ)
    launch_inplace.forgive_finished(lambda rank: last_step.finished(steps, rank),
                                    lambda m: print(m, file=sys.stderr, flush=True))
    args = launch_inplace.install(args, os.environ, lambda rank: last_step.read(steps, rank))
    launch_inplace.quick_rendezvous_polls(launch_inplace.rendezvous_poll_s(args))
    tie_workers(warm=launch_inplace.requested(os.environ) > 0 and f"{launch_inplace.RESTARTS_FLAG}=0" not in args)
    wake_on_close()
    if os.environ.get(E.SPARES, "0") not in ("", "0"):
        launch_spare.ends_cleanly()
        launch_spare.warm_on_standby(warm_pool)
        launch_spare.quick_expiry()
    try:
        torchrun_main(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = exit_code_of(int(failure.exitcode))
        print(last_step.exit_line(rank, failure.exitcode, code, last_step.read(steps, rank)),
              file=sys.stderr, flush=True)
        return code
    except SignalException as e:
        return 128 + int(e.sigval)
    except OSError as e:
        if e.filename is None or not isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        return missing_program(e)
    except RendezvousConnectionError as e:
        print(f"stoker launch: lost the rendezvous store: {e}", file=sys.stderr, flush=True)
        return EXIT_RENDEZVOUS_LOST
    finally:
        if hold is not None:
            hold.cancel()
        if steps:
            shutil.rmtree(steps, ignore_errors=True)
        if forwarder is not None:
            forwarder.close()
    if hold is not None and hold.held_at is not None:
        print(f"stoker launch: the workers stopped {time.monotonic() - hold.held_at:.1f}s after SIGTERM",
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
