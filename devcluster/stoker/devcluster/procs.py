"""Thin process supervision for the local control plane.

Each process runs in its own session (so its process group id is its pid),
logs to its own file and is recorded in a pid file. A pid only counts as ours
while its command line still mentions the cluster's state directory, so a
recycled pid is never mistaken for a component (nor killed).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from stoker.common.parent_death import die_with_parent


class ClusterError(RuntimeError):
    """A component failed to build, start or become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (SO_REUSEADDR: a port in TIME_WAIT counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


# ---------------------------------------------------------------- the process table (/proc)


def pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def argv_of(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def environ_of(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:   # gone, or another user's process
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, also those that left its group or session
    (torchrun puts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for p in pids():
        f = stat_fields(p)
        if f is not None:
            children.setdefault(int(f[1]), []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def find_processes(*, argv_has: bytes | None = None, argv_lacks: tuple[bytes, ...] = (),
                   env_has: tuple[bytes, ...] = ()) -> list[int]:
    """Pids (not this process) whose argv has the word ``argv_has`` and none of
    ``argv_lacks``, and whose environment holds every ``NAME=value`` of ``env_has``."""
    me, out = os.getpid(), []
    for p in pids():
        if p == me:
            continue
        argv = argv_of(p) if argv_has is not None or argv_lacks else []
        if argv is None or (argv_has is not None and argv_has not in argv) or any(w in argv for w in argv_lacks):
            continue
        env = environ_of(p) if env_has else []
        if env is None or any(e not in env for e in env_has):
            continue
        out.append(p)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_zombie(pid: int) -> bool:
    f = stat_fields(pid)
    return f is None or f[0] in ("Z", "X")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def owned_alive(pid: int, marker: str) -> bool:
    """True while ``pid`` runs and its command line contains ``marker``."""
    _reap(pid)
    return pid > 0 and not _is_zombie(pid) and marker in cmdline(pid)


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    me = os.getpid()
    return [p for p in pids() if p != me and owned_alive(p, marker)]


def _pdeathsig() -> None:
    die_with_parent(signal.SIGTERM)


def spawn(
    argv: list[str],
    *,
    logfile: Path,
    pidfile: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen:
    """Start ``argv`` in a new session, output appended to ``logfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        # PDEATHSIG fires when the *thread* that forked exits: only use it from the main thread.
        tie = die_with_parent and threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_pdeathsig if tie else None,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc


def stop_group(pid: int, marker: str, *, sig: int = signal.SIGTERM, grace: float = 10.0) -> bool:
    """Signal the process group ``pid`` (only if it is still ours); SIGKILL after ``grace``.

    Returns True if something was running. The group counts as ours while its
    leader runs with ``marker`` in its command line, or, once the leader is gone,
    while members remain (Linux does not reuse a pid that is still a group id)."""
    _reap(pid)
    if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        if marker not in cmdline(pid):
            return False
    elif not _group_alive(pid):
        return False
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not _group_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _group_alive(pid):
        _reap(pid)
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in process group ``pgid``."""
    return any(f is not None and int(f[2]) == pgid and f[0] not in ("Z", "X") for f in map(stat_fields, pids()))


def wait_ready(
    name: str,
    ready: Callable[[], bool],
    *,
    proc: subprocess.Popen,
    logfile: Path,
    timeout: float,
) -> float:
    """Poll ``ready()`` until true; fail fast (with the log tail) if ``proc`` exits."""
    start = time.monotonic()
    pid = proc.pid
    while True:
        if proc.poll() is not None:
            raise ClusterError(
                f"{name} exited during startup (pid {pid}, exit {proc.returncode}). Last lines of {logfile}:\n{log_tail(logfile)}"
            )
        try:
            if ready():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - not up yet; connection refused etc.
            pass
        if time.monotonic() - start > timeout:
            raise ClusterError(
                f"{name} not ready after {timeout:.0f}s (pid {pid}). Last lines of {logfile}:\n"
                f"{log_tail(logfile)}"
            )
        time.sleep(0.1)
