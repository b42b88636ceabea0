"""The fault kinds of the real-node chaos profile (bench/chaos_real.py): what fails on
a machine that runs kubelet + containerd, each at a random moment of real training
(tests/recovery_tests/faults.py), each returning its raw sample like the kinds of
bench/chaos_faults.py (whose SIGKILL of a trainer works here as well: the host sees the
containers' processes).

  container_killed  the runtime kills a worker's container (containerd: every process in
                    it, SIGKILL), as an OOM kill or a crashed runtime shim would
  node_lost         a node that runs a worker (never the operator's) stops at once: kubelet,
                    kube-proxy, containerd and every container SIGKILLed; it comes back
                    once the job trains again, for the next faults
  operator_killed   the Helm-installed operator's process SIGKILLed in its container (the
                    kubelet restarts it); the rendezvous store runs apart and stays
  network_cut       a worker pod's network cut: iptables DROP of everything but loopback in
                    the pod's own network namespace for a random 10-60 s, then healed. A
                    cut may end the incarnation (its heartbeats stop) or not: the sample
                    says which (``restarted``) and bench/chaos_monitor.py what it was blamed on
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from bench import chaos_faults as K
from stoker.worker import journal
from tests.recovery_tests import faults as F


@dataclasses.dataclass
class RealCtx(K.Ctx):
    cut_s: tuple[float, float] = (10.0, 60.0)
    spare_node: str = ""                                            # the operator's node: never lost
    container: Callable[[str], tuple[str, Path] | None] = lambda pod: None   # pod -> (container id, containerd socket)
    operator_back: Callable[[float, int | None], float | None] = lambda since, old: None  # s until Ready again
    revive_nodes: Callable[[], float] = lambda: 0.0                  # brings lost nodes back; seconds it took
    pods_on: Callable[[int], dict[str, str]] = lambda inc: {}        # the incarnation's pods -> their nodes


def container_killed(c: RealCtx) -> dict:
    m, pod, pid = K._process_at_moment(c, F.trainer_pid)
    where = c.container(pod) if pid else None
    if not where:
        return {"pod": pod, "hit": False, **m}
    cid, sock = where
    t0 = time.time()
    r = subprocess.run(["ctr", "--address", str(sock), "--namespace", "k8s.io", "tasks", "kill", "--all",
                        "--signal", "SIGKILL", cid], capture_output=True, text=True, timeout=30)
    return {"t0": t0, "pod": pod, "container": cid[:12], "hit": r.returncode == 0, "ctr": r.stderr.strip()[-300:],
            **m}


def node_lost(c: RealCtx, tries: int = 3) -> dict:
    """A node with a worker of the moment's incarnation on it, not the operator's. When
    both workers run on the operator's node (the incarnation after an earlier loss), the
    moment is taken in the next incarnation."""
    for n in range(tries):
        m = c.moment()
        nodes = {p: node for p, node in c.pods_on(m["incarnation"]).items() if node and node != c.spare_node}
        if nodes or c.finished():
            break
        c.after_generation = m["generation"]
    if not nodes:
        return {"hit": False, "retried": n, **m}
    pod = c.rng.choice(sorted(nodes))
    t0 = time.time()
    c.lose_node(nodes[pod])
    stopped_s = time.time() - t0
    back = _wait_training_again(c, m["generation"], timeout=300)
    revive_s = c.revive_nodes()
    return {"t0": t0, "pod": pod, "node": nodes[pod], "hit": True, "stop_s": stopped_s, "retried": n,
            "trained_again": back, "revive_s": revive_s, **m}


def _wait_training_again(c: RealCtx, gen: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not c.finished():
        if any(r["generation"] > gen for r in F.records_by(c.journal_dir, "generation") if r["event"] == "step"):
            return True
        time.sleep(0.5)
    return False


def operator_killed(c: RealCtx) -> dict:
    m = c.moment()
    pid = c.operator_pid()
    t0 = time.time()
    ok = F.signal_pid(pid, signal.SIGKILL)
    back_s = c.operator_back(t0, pid) if ok else None
    ran = len({r["step"] for r in journal.read(c.journal_dir) if r["event"] == "step" and r["t"] >= t0})
    return {"t0": t0, "operator_pid": pid, "hit": ok, "back_s": back_s, "steps_while_down": ran, **m}


def iptables_cut(netns_fd: int, op: str) -> tuple[bool, str]:
    """Insert (``-I``) or delete (``-D``) the DROP rules in the network namespace held open
    by ``netns_fd`` (everything in and out but loopback)."""
    errs = []
    for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
        rule = [chain, "1"] if op == "-I" else [chain]
        r = subprocess.run(["nsenter", f"--net=/proc/self/fd/{netns_fd}", "iptables", "-w", op, *rule,
                            "!", flag, "lo", "-j", "DROP"], pass_fds=(netns_fd,), capture_output=True, text=True,
                           timeout=30)
        errs += [r.stderr.strip()] if r.returncode else []
    return not errs, "; ".join(errs)[-300:]


def network_cut(c: RealCtx) -> dict:
    m, pod, pid = K._process_at_moment(c, F.trainer_pid)
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY) if pid else None
    except OSError:
        fd = None
    if fd is None:
        return {"pod": pod, "hit": False, **m}
    cut_s = c.rng.uniform(*c.cut_s)
    try:
        t0 = time.time()
        ok, err = iptables_cut(fd, "-I")
        time.sleep(cut_s if ok else 0)
        t1 = time.time()
        healed, heal_err = iptables_cut(fd, "-D") if ok else (False, "")
    finally:
        os.close(fd)
    recs = F.records_by(c.journal_dir, "generation")
    during = {r["step"] for r in recs if r["event"] == "step" and r["generation"] == m["generation"]
              and t0 <= r["t"] <= t1}
    return {"t0": t0, "pod": pod, "hit": ok, "cut_error": err or None, "cut_s": cut_s, "healed": healed,
            "heal_error": heal_err or None, "restarted": c.generation() > m["generation"],
            "steps_of_incarnation_during_cut": len(during), **m}


KINDS: dict[str, tuple[Callable, str]] = {
    "sigkill_trainer": (K.sigkill_trainer, K.RESTARTS),
    "container_killed": (container_killed, K.RESTARTS),
    "node_lost": (node_lost, K.RESTARTS),
    "operator_killed": (operator_killed, K.NO_RESTART),
    "network_cut": (network_cut, K.EITHER),
}
