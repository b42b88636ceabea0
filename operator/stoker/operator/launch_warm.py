"""Warm trainers (issue 12): a trainer restarted in place skips the Python start and the imports.

Most of a restarted trainer's start is importing torch and the trainer's modules (measured at load
8 on 2 cores: torch 4.2 s, the built-in trainer's modules 1.6 s, building its Trainer 1.2 s). Each
time torchrun starts a trainer (``python [-u] -m MOD ...`` or ``python [-u] SCRIPT ...``, output
not redirected), ``WarmPool`` also starts one *warm* process for the next time: ``python -c
LOADER``, which imports torch, MOD and the modules MOD names in ``__stoker_warm__`` (what its
main imports late), and waits on its stdin. The next start of the same command
(an in-place restart) is handed to a warm process instead: the trainer's environment and command
line over its stdin, then it runs MOD or SCRIPT as ``__main__``. It writes the trainer's command
line over its own (``/proc/PID/cmdline``, as setproctitle does), so tools that look for trainers
find it, and never find an idle warm process (whose command line names neither).

A warm process starts importing once a trainer of its pod has completed a step (its last-step
record, ``stoker.common.last_step``), at most ``WARM_DELAY_S`` later, so it does not take the CPU
from the trainer it was started beside while that one starts; a trainer handed to it sooner ends
the wait (it then imports as a cold start would). Warm processes are started by the thread that
starts the trainers (PR_SET_PDEATHSIG follows the creating thread) and die with the launcher. Each
costs an idle interpreter with torch and the warm set imported (about 700 MB resident on the test bed,
torch alone 530 MB; its libraries' pages are shared with the trainer) per local trainer, for as long as the
pod runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

ARGS_ENV = "STOKER_WARM_ARGS"
DELAY_ENV = "STOKER_WARM_DELAY"
FLAG = "--stoker-warm"
# A warm process starts its imports once the trainer it was started beside has completed a step
# (or a trainer is handed to it, or this many seconds passed): importing torch beside a starting
# trainer took the CPU that trainer needed (bench_recovery on 2 cores: the restarted trainer's
# restore took 1.0 s in place against 0.45 s in a new pod, which has no warm process). A fixed
# 15 s wait instead left the warm process cold when the next crash came early (restart 0.4 s slower).
WARM_DELAY_S = 60.0

LOADER = r'''
import json, os, select, sys, time


def split(args):
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-m":
        i += 1
    if i < len(args) and args[i] == "-m":
        return args[i + 1], None, args[i + 2:]
    return None, args[i], args[i + 1:]


def retitle(cmdline):
    """Write the trainer's command line over this process's own (its original argv memory)."""
    import ctypes
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    raw = b"\0".join(a.encode() for a in cmdline)[:end - start - 1]
    ctypes.memmove(start, raw.ljust(end - start, b"\0"), end - start)


def wait_for_a_step(limit):
    """Until a trainer of this pod completes a step after now (its last-step record is written), a
    trainer is handed over (stdin), or ``limit`` seconds pass."""
    folder, since, end = os.environ.get("STOKER_LAST_STEP_DIR"), time.time(), time.monotonic() + limit
    while time.monotonic() < end:
        if select.select([sys.stdin], [], [], 0.2)[0]:
            return
        try:
            if folder and any(e.stat().st_mtime > since for e in os.scandir(folder)):
                return
        except OSError:
            pass


def main():
    mod, script, rest = split(json.loads(os.environ["STOKER_WARM_ARGS"]))
    wait_for_a_step(float(os.environ.get("STOKER_WARM_DELAY") or 0))
    t0 = time.monotonic()
    try:
        import torch  # noqa: F401  (the point: imported before the trainer is needed)
        if mod:
            import importlib
            for name in getattr(importlib.import_module(mod), "__stoker_warm__", ()):
                importlib.import_module(name)
    except BaseException:  # the run raises it again, where it is the trainer's error
        pass
    if select.select([sys.stdin], [], [], 0)[0] == []:  # not handed a trainer meanwhile: ready for the next
        print(f"stoker warm: ready for the next restart of {mod or script} in {os.getpid()} "
              f"({time.monotonic() - t0:.1f}s importing)", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        os._exit(0)
    job = json.loads(line)
    os.environ.clear()
    os.environ.update(job["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        retitle(job["cmdline"])
    except (OSError, ValueError, IndexError):
        pass
    import runpy
    if mod:
        sys.argv = [mod, *rest]
        runpy.run_module(mod, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [script, *rest]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")


main()
'''


def eligible(args: list[str], kwargs: dict[str, Any]) -> bool:
    """A Python trainer (``-m MOD`` or a script) whose output is inherited, not redirected."""
    if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None or len(args) < 2:
        return False
    exe = os.path.basename(args[0])
    return exe.startswith("python") and "-c" not in args[1:]


class WarmPool:
    """Wraps the ``Popen`` torchrun's SubprocessHandler calls (``popen``)."""

    def __init__(self, popen: Callable[..., Any]) -> None:
        self._popen = popen
        self._idle: dict[tuple[str, ...], list[Any]] = {}
        self.handed = 0   # trainers started warm

    def __call__(self, *a: Any, **kw: Any) -> Any:
        args = [str(x) for x in (kw.get("args") if "args" in kw else a[0])]
        if not eligible(args, kw):
            return self._popen(*a, **kw)
        key = tuple(args)
        proc = self._take(key, args, kw.get("env") or dict(os.environ))
        if proc is None:
            proc = self._popen(*a, **kw)
        self._warm(key)
        return proc

    def _take(self, key: tuple[str, ...], args: list[str], env: dict[str, str]) -> Any | None:
        for proc in self._idle.pop(key, []):
            if proc.poll() is not None:
                continue
            try:
                proc.stdin.write((json.dumps({"env": dict(env), "cmdline": args}) + "\n").encode())
                proc.stdin.close()
            except OSError:
                continue
            self.handed += 1
            return proc
        return None

    def prewarm(self, key: tuple[str, ...]) -> None:
        """A warm process for a first start of ``key`` that has not happened yet (a hot spare's trainer,
        launch_spare): it imports at once, no trainer of its pod runs beside it."""
        if not self._idle.get(key):
            self._warm(key, delay_s=0.0)

    def _warm(self, key: tuple[str, ...], delay_s: float = WARM_DELAY_S) -> None:
        """One warm process for the next start of ``key`` (started here: see the module docstring)."""
        pad = "." * (len("\0".join(key)) + 64)  # room for the trainer's command line (retitle)
        env = {**os.environ, ARGS_ENV: json.dumps(list(key[1:])), DELAY_ENV: f"{delay_s:g}"}
        try:
            proc = self._popen(args=[key[0], "-u", "-c", LOADER, FLAG, pad], env=env, stdin=subprocess.PIPE,
                               start_new_session=True)
        except OSError as e:
            print(f"stoker launch: no warm trainer: {e}", file=sys.stderr, flush=True)
            return
        self._idle.setdefault(key, []).append(proc)
