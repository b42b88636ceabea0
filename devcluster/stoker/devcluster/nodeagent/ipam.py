"""Loopback addresses for process nodes and their pods.

Linux routes all of 127.0.0.0/8 to ``lo``, so any 127.x.y.z can be bound
without setup. Each agent gets a node index N in 1..254, allocated under a
lock in a directory shared by every agent on the machine (default
``$TMPDIR/stoker-nodeagent-ipam``, override with ``STOKER_NODEAGENT_IPAM_DIR``),
so agents of different clusters on one host never collide. The node's address
is 127.N.0.1; its pods get 127.N.a.b (b in 2..254), handed out in order by the
agent itself (the sequence is kept in its state file).

An index is owned by (node name, state dir). A restarted agent with the same
pair gets its index back; indices of dead agents are reused, oldest first,
only once no never-used index is left."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager

from .procs import process_identity


def ipam_dir() -> str:
    return os.environ.get("STOKER_NODEAGENT_IPAM_DIR") or os.path.join(
        tempfile.gettempdir(), "stoker-nodeagent-ipam")


@contextmanager
def _locked(directory: str):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def choose_index(table: dict[str, dict], key: str, alive) -> int:
    """Pure choice: the caller's own index, else a never-used one, else the
    least recently claimed index whose owner is dead."""
    for idx, entry in table.items():
        if entry.get("key") == key:
            return int(idx)
    for idx in range(1, 255):
        if str(idx) not in table:
            return idx
    dead = [(e.get("claimed", 0), int(i)) for i, e in table.items() if not alive(e)]
    if not dead:
        raise RuntimeError("all 254 process-node indices are held by live agents "
                           f"(see {ipam_dir()}/nodes.json)")
    return min(dead)[1]


def claim_node_index(node: str, state_dir: str, directory: str | None = None) -> int:
    directory = directory or ipam_dir()
    key = f"{node}@{os.path.realpath(state_dir)}"
    path = os.path.join(directory, "nodes.json")
    with _locked(directory):
        try:
            with open(path) as f:
                table = json.load(f)
        except (FileNotFoundError, ValueError):
            table = {}

        def alive(entry: dict) -> bool:
            pid = entry.get("pid")
            return bool(pid) and process_identity(pid) == entry.get("ident")

        idx = choose_index(table, key, alive)
        table[str(idx)] = {"key": key, "pid": os.getpid(),
                           "ident": process_identity(os.getpid()), "claimed": time.time()}
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return idx


def node_ip(index: int) -> str:
    return f"127.{index}.0.1"


def pod_ip(index: int, seq: int) -> str:
    """The seq-th pod address of node ``index`` (wraps after ~64k pods)."""
    seq %= 256 * 253
    return f"127.{index}.{seq // 253}.{seq % 253 + 2}"


def next_pod_ip(index: int, seq: int, in_use: set[str]) -> tuple[str, int]:
    """(address, next seq), skipping addresses still held by live pods."""
    for _ in range(256 * 253):
        ip = pod_ip(index, seq)
        seq += 1
        if ip not in in_use:
            return ip, seq
    raise RuntimeError(f"no free pod address on node index {index}")
