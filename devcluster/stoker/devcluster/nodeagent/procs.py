"""Process helpers: spawn a container process in its own process group, tied to
the agent's life (PR_SET_PDEATHSIG), and kill a process tree."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess

from stoker.devcluster.procs import descendants, find_processes, stat_fields

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setpgid(0, 0)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: list[str], *, env: dict[str, str], cwd: str, log_path: str) -> subprocess.Popen:
    """Start argv with stdout+stderr appended to log_path. The child leads its own
    process group (so a pod's processes can be signalled together) and gets
    SIGKILL if the agent dies (only the direct child; see ``kill_tree``)."""
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_child_setup, close_fds=True)


def process_identity(pid: int) -> str | None:
    """'pid:starttime' from /proc (guards against pid reuse), None if gone."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return f"{pid}:{fields[19]}"


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal pid's process group and every descendant (also those that moved to
    their own group or session, e.g. torchrun's workers)."""
    for p in descendants(pid):
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass
    signal_group(pid, sig)


def marked_processes(marker: bytes) -> list[int]:
    """Pids whose environment contains ``marker`` (an exact ``NAME=value``).
    Every pod process inherits the agent's STOKER_NODEAGENT_HOSTS, so this finds
    them even after they left their process group or session."""
    return find_processes(env_has=(marker,))


def kill_marked(marker: bytes, sig: int = signal.SIGKILL) -> int:
    n = 0
    for pid in marked_processes(marker):
        try:
            os.kill(pid, sig)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
    return n
