"""A real node's cgroups (made for the kubelet, emptied and removed at the end: containers
escape the process groups that started them) and what it leaves mounted."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup")


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """Every directory of ``cgroup_root`` in every v1 hierarchy, deepest first."""
    found: list[Path] = []
    if not CGROUP_V1.is_dir():
        return found
    for hierarchy in sorted(CGROUP_V1.iterdir()):
        top = hierarchy / cgroup_root.lstrip("/")
        if top.is_dir():
            found.extend(Path(d) for d, _, _ in os.walk(top))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def create_cgroup(cgroup_root: str) -> None:
    """``cgroup_root`` in every v1 hierarchy (the kubelet requires it to exist). A new
    cpuset cgroup starts with no CPUs or memory nodes: copy its parent's."""
    for hierarchy in sorted(CGROUP_V1.iterdir()):
        if not (hierarchy / "cgroup.procs").exists():
            continue
        top = hierarchy / cgroup_root.lstrip("/")
        top.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (top / knob).exists() and not (top / knob).read_text().strip():
                (top / knob).write_text((hierarchy / knob).read_text())


def cgroup_pids(cgroup_root: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(cgroup_root):
        try:
            pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return pids


def kill_cgroup(cgroup_root: str, timeout: float = 10) -> int:
    """SIGKILL every process under ``cgroup_root`` until none is left; returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids(cgroup_root)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(killed)


def remove_cgroup(cgroup_root: str, timeout: float = 10) -> list[Path]:
    """rmdir the tree (deepest first); returns what could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for d in cgroup_dirs(cgroup_root):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(d)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def mounts_under(*roots: Path) -> list[str]:
    """Mount points in this mount namespace at or below any of ``roots``, deepest first."""
    prefixes = [str(r).rstrip("/") for r in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if any(target == p or target.startswith(p + "/") for p in prefixes):
            found.append(target)
    return sorted(set(found), key=len, reverse=True)


def unmount_all(*roots: Path) -> list[str]:
    """Unmount everything below ``roots`` (lazily if busy); returns what is still mounted."""
    for target in mounts_under(*roots):
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True)
    return mounts_under(*roots)
