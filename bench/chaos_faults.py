"""The fault kinds of bench/chaos.py. Each one takes a ``Ctx`` (the running job and
the suite's seeded ``random.Random``), waits for a random moment of real training
(tests/recovery_tests/faults.py) and injects; it returns the raw sample of what it
did (the injection time ``t0`` on the wall clock, what it hit, and for some kinds
whether the fault landed where it was meant to: mid-save, overlapping a save)."""
from __future__ import annotations

import dataclasses
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from stoker.worker import journal
from tests.recovery_tests import faults as F

RESTARTS = "restart"   # the fault must end the incarnation (detect/recover measured)
NO_RESTART = "none"    # training may go on (operator, store, S3): a restart is not expected
EITHER = "either"      # it may or may not end the incarnation (a network cut): the sample says which


@dataclasses.dataclass
class Ctx:
    rng: random.Random
    job: str
    replicas: int
    journal_dir: Path
    incarnation: Callable[[], int]            # status.incarnation (pods are named by it)
    finished: Callable[[], bool]              # the job ended (no moment will come)
    pod_node: Callable[[str], str]
    lose_node: Callable[[str], None]          # SIGKILL a process node (and add a fresh one)
    kill_operator: Callable[[], None]         # SIGKILL the operator's process group (store included)
    start_operator: Callable[[], None]
    operator_pid: Callable[[], int]
    stop_s3: Callable[[], None]
    start_s3: Callable[[], None]
    s3_outage_s: tuple[float, float]
    after_generation: int = -1               # the next moment waits for a newer generation than this
    after_t: float = 0.0
    storage_back_t: float = 0.0               # when the last S3 outage ended (saves before it are slow)
    stopped: list = dataclasses.field(default_factory=list)   # SIGSTOPped pids, SIGKILLed at the end

    def generation(self) -> int:
        """The journal's newest generation (faults.with_generations): a restart begins one, in place
        (same incarnation, same pods) or not."""
        return F.newest_generation(self.journal_dir)

    def moment(self) -> dict:
        return F.at_random_moment(self.rng, self.journal_dir, self.generation, min_steps=2, max_steps=12,
                                  after_incarnation=self.after_generation, after_t=self.after_t, timeout=300,
                                  alive=lambda: not self.finished(), key="generation")

    def pod(self, inc: int) -> str:
        return f"{self.job}-worker-{self.rng.randrange(self.replicas)}-{inc}"


def _process_at_moment(c: Ctx, find: Callable[[str], int | None], tries: int = 3) -> tuple[dict, str, int | None]:
    """A random moment and the pid ``find`` gives for a random pod of its incarnation. When
    the process is gone, the incarnation is ending (an earlier fault without a restart of
    its own, e.g. the rendezvous store killed, restarted the job after all: the default
    run's chaos-7): take the moment in the next incarnation instead."""
    for n in range(tries):
        m = c.moment()
        pod = c.pod(m["incarnation"])
        pid = find(pod)
        if pid or c.finished():
            break
        c.after_generation = m["generation"]
    return {**m, "retried": n}, pod, pid


def _signal_trainer(c: Ctx, sig: int) -> dict:
    m, pod, pid = _process_at_moment(c, F.trainer_pid)
    t0 = time.time()
    ok = F.signal_pid(pid, sig)
    if ok and sig == signal.SIGSTOP:
        c.stopped.append(pid)
    return {"t0": t0, "pod": pod, "pid": pid, "hit": ok, **m}


def sigkill_trainer(c: Ctx) -> dict:
    return _signal_trainer(c, signal.SIGKILL)


def sigstop(c: Ctx) -> dict:
    return _signal_trainer(c, signal.SIGSTOP)


def sigkill_launcher(c: Ctx) -> dict:
    m, pod, pid = _process_at_moment(c, F.launcher_pid)
    t0 = time.time()
    return {"t0": t0, "pod": pod, "hit": F.signal_pid(pid, signal.SIGKILL), **m}


def node_lost(c: Ctx) -> dict:
    m = c.moment()
    pod = c.pod(m["incarnation"])
    node = c.pod_node(pod)
    t0 = time.time()
    c.lose_node(node)
    return {"t0": t0, "pod": pod, "node": node, "hit": bool(node), **m}


def operator_killed(c: Ctx) -> dict:
    m = c.moment()
    down_s = c.rng.uniform(0.0, 5.0)
    t0 = time.time()
    c.kill_operator()
    time.sleep(down_s)
    c.start_operator()
    ran = len({r["step"] for r in journal.read(c.journal_dir) if r["event"] == "step" and r["t"] >= t0})
    return {"t0": t0, "down_s": down_s, "hit": True, "steps_while_down": ran, **m}


def rendezvous_killed(c: Ctx) -> dict:
    m = c.moment()
    pid = F.rendezvous_store_pid(c.operator_pid())
    t0 = time.time()
    return {"t0": t0, "store_pid": pid, "hit": F.signal_pid(pid, signal.SIGKILL), **m}


def s3_outage(c: Ctx) -> dict:
    m = c.moment()
    lo, hi = c.s3_outage_s
    down_s = c.rng.uniform(lo, hi)
    t0 = time.time()
    c.stop_s3()
    time.sleep(down_s)
    c.start_s3()
    t1 = c.storage_back_t = time.time()
    recs = journal.read(c.journal_dir)
    overlapped = F.saves_overlapping(recs, t0, t1, interval=5)
    failed = sorted({r["step"] for r in recs if r["event"] == "checkpoint" and not r.get("ok") and r["t"] >= t0})
    return {"t0": t0, "down_s": down_s, "hit": bool(overlapped), "saves_overlapping": overlapped,
            "failed_saves": failed,
            "steps_during_outage": len({r["step"] for r in recs if r["event"] == "step" and t0 <= r["t"] <= t1}), **m}


def _save_seconds(recs: list[dict], since: float = 0.0) -> float:
    """Median time from a checkpoint step's step record to its save outcome, over saves
    begun after ``since`` (the end of the last S3 outage: a save that waited out an outage
    says nothing of how long a save takes; 0.3 s if none is known). Seed 837048268: saves
    slowed by a 10 s outage made the median 17 s, the kill came 145 steps after the save
    it was meant for, and the job had ended before its next fault."""
    key = lambda r: (*journal.writer(r), r["step"])  # noqa: E731
    at = {key(r): r["t"] for r in recs if r["event"] == "step" and r["t"] >= since}
    d = [r["t"] - at[key(r)] for r in recs if r["event"] == "checkpoint" and key(r) in at]
    return statistics.median(d) if d else 0.3


def kill_during_save(c: Ctx, interval: int = 5) -> dict:
    """SIGKILL a trainer at a random moment of a save: after a checkpoint step's record,
    within the time saves have taken so far (no debug hook)."""
    c.moment()  # a random point of training first, then the next checkpoint step after it
    deadline = time.monotonic() + 300
    since = time.time()
    while time.monotonic() < deadline:
        gen = c.generation()
        recs = [r for r in F.records_by(c.journal_dir, "generation") if r["generation"] == gen]
        due = [r for r in recs if r["event"] == "step" and r["t"] > since and r["step"] % interval == 0]
        if due:
            step, inc = due[0]["step"], due[0]["incarnation"]
            delay = c.rng.uniform(0.0, _save_seconds(journal.read(c.journal_dir), since=c.storage_back_t))
            time.sleep(max(0.0, due[0]["t"] + delay - time.time()))
            pod = c.pod(inc)
            pid = F.trainer_pid(pod)
            t0 = time.time()
            ok = F.signal_pid(pid, signal.SIGKILL)
            done = any(r["event"] == "checkpoint" and r["step"] == step and r["t"] <= t0
                       for r in journal.read(c.journal_dir))
            return {"t0": t0, "pod": pod, "hit": ok, "incarnation": inc, "generation": gen, "save_step": step,
                    "delay_s": delay, "mid_save": not done}
        time.sleep(0.01)
    raise TimeoutError("no checkpoint step within 300 s")


def double(c: Ctx) -> dict:
    """Two faults close together (0-2 s apart) on the two workers (trainer SIGKILL,
    launcher SIGKILL or SIGSTOP each). The first fault often takes the second worker's
    trainer down with it (its all-reduce fails) before the gap is over; then the second
    fault hits that pod's other live process (the launcher, re-rendezvousing, or the
    trainer) and says so (``fallback``): still a second fault at a random moment of the
    first one's fallout. When nothing of that pod is alive any more (the operator already
    deleted it for the restart) the sample says ``second_landed: False``: the fault is
    the first one, and the table counts how many doubles were really double."""
    m = c.moment()
    inc = m["incarnation"]
    kinds = [c.rng.choice(["trainer", "launcher", "stop"]) for _ in range(2)]
    gap = c.rng.uniform(0.0, 2.0)
    out = []
    for i, k in enumerate(kinds):
        pod = f"{c.job}-worker-{i % c.replicas}-{inc}"
        out.append(_hit_pod(c, pod, k, fallback=i > 0))
        if i == 0:
            time.sleep(gap)
    return {"t0": out[0]["t"], "gap_s": gap, "hit": out[0]["hit"], "second_landed": out[1]["hit"], "parts": out, **m}


def _hit_pod(c: Ctx, pod: str, kind: str, *, fallback: bool) -> dict:
    order = [F.launcher_pid, F.trainer_pid] if kind == "launcher" else [F.trainer_pid, F.launcher_pid]
    sig = signal.SIGSTOP if kind == "stop" else signal.SIGKILL
    t = time.time()
    used = None
    for n, find in enumerate(order[:2 if fallback else 1]):
        pid = find(pod)
        if F.signal_pid(pid, sig):
            if sig == signal.SIGSTOP:
                c.stopped.append(pid)
            used = None if n == 0 else ("trainer" if kind == "launcher" else "launcher")
            return {"kind": kind, "pod": pod, "t": t, "hit": True, "fallback": used}
    return {"kind": kind, "pod": pod, "t": t, "hit": False, "fallback": used}


def during_recovery(c: Ctx) -> dict:
    """A trainer SIGKILLed, then a trainer of its replacement (restarted in place, or in the
    next incarnation's pod) SIGKILLed while it starts, restores or takes its first steps
    (0-3 s after its process appears)."""
    first = _signal_trainer(c, signal.SIGKILL)
    gen0 = first["generation"]
    old = {first["pid"]} | {F.trainer_pid(f"{c.job}-worker-{i}-{first['incarnation']}") for i in range(c.replicas)}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        inc = c.incarnation()
        pod = c.pod(inc)
        pid = F.trainer_pid(pod)
        if pid and pid not in old:
            time.sleep(c.rng.uniform(0.0, 3.0))
            gen, t0 = c.generation(), time.time()
            trained = len([r for r in F.records_by(c.journal_dir, "generation")
                           if r["event"] == "step" and r["generation"] > gen0])
            # generation: the newest the journal knew at the kill (the replacement's own if it had journaled)
            return {"t0": t0, "first": first, "pod": pod, "incarnation": inc, "generation": gen,
                    "hit": F.signal_pid(pid, signal.SIGKILL), "steps_of_new_incarnation_at_kill": trained}
        time.sleep(0.05)
    raise TimeoutError("no replacement trainer within 300 s")


KINDS: dict[str, tuple[Callable[[Ctx], dict], str]] = {
    "sigkill_trainer": (sigkill_trainer, RESTARTS),
    "sigkill_launcher": (sigkill_launcher, RESTARTS),
    "sigstop": (sigstop, RESTARTS),
    "node_lost": (node_lost, RESTARTS),
    "operator_killed": (operator_killed, NO_RESTART),
    "rendezvous_killed": (rendezvous_killed, NO_RESTART),
    "s3_outage": (s3_outage, NO_RESTART),
    "kill_during_save": (kill_during_save, RESTARTS),
    "double": (double, RESTARTS),
    "during_recovery": (during_recovery, RESTARTS),
}


def kill_stopped(pids: list[int]) -> None:
    for pid in pids:
        F.signal_pid(pid, signal.SIGKILL)


def leftover_processes(job: str) -> list[int]:
    """Trainer or launcher processes of ``job`` still alive (after it ended: orphans)."""
    out = []
    for marker, launcher in ((b"stoker.worker.train", False), (b"stoker.operator.launch", True)):
        out += [pid for pid, _, env in F.processes(marker, launcher=launcher)
                if f"STOKER_JOB_NAME={job}".encode() in env]
    return out
