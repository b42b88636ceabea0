"""Faults at random moments of real work, for the e2e tests and bench/chaos.py.

Plain functions, no pytest. A fault never waits for a trainer parked in a debug hook:
``at_random_moment`` waits until the job's current incarnation is training (its step
journal, stoker.worker.journal, shows steps of that incarnation), lets a random number
of further steps pass, then sleeps a random fraction of the observed step time, so the
fault lands inside a step (forward/backward, the all-reduce, an async upload) rather
than between steps. Every choice comes from the caller's ``random.Random`` (seeded,
the seed printed), so a failing run can be replayed.
"""
from __future__ import annotations

import os
import pathlib
import random
import signal
import time
from typing import Callable

from stoker.worker import journal


def processes(marker: bytes, *, launcher: bool) -> list[tuple[int, list[bytes], list[bytes]]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if marker not in cmd:
                continue
            # the installed launcher, or the copy an init container put in the pod (launcher_bundle)
            is_launcher = b"stoker.operator.launch" in cmd or any(c.endswith(b"/stoker_launch.py") for c in cmd)
            if is_launcher != launcher or (not launcher and b"torch.distributed.run" in cmd):
                continue
            env = pathlib.Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        out.append((int(entry), cmd, env))
    return out


def trainer_pid(pod_name: str, marker: bytes = b"stoker.worker.train") -> int | None:
    """The trainer process (not the launcher) of a pod, on a process node or inside a real
    node's container (the host sees those processes too); ``marker``: an argument of its command."""
    want = f"STOKER_POD_NAME={pod_name}".encode()
    return next((pid for pid, _, env in processes(marker, launcher=False) if want in env), None)


def idle_warm_pid(pod_name: str) -> int | None:
    """The pod's idle warm trainer (stoker.operator.launch_warm: the process the next in-place
    restart's trainer is handed to; ``--stoker-warm`` in its command until it is handed one)."""
    want = f"STOKER_POD_NAME={pod_name}".encode()
    return next((pid for pid, _, env in processes(b"--stoker-warm", launcher=False) if want in env), None)


def launcher_pid(pod_name: str) -> int | None:
    """The pod's launcher (``python -m stoker.operator.launch``: torchrun's agent)."""
    want = f"STOKER_POD_NAME={pod_name}".encode()
    return next((pid for pid, _, env in processes(b"stoker.operator.launch", launcher=True) if want in env), None)


def rendezvous_store_pid(operator_pid: int) -> int | None:
    """The operator's rendezvous store child (``python -m stoker.operator.rendezvous``)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if b"stoker.operator.rendezvous" in cmd and ppid == operator_pid:
            return int(entry)
    return None


def signal_pid(pid: int | None, sig: int) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def steps_of(journal_dir: pathlib.Path, incarnation: int, key: str = "incarnation") -> list[dict]:
    return [r for r in records_by(journal_dir, key) if r["event"] == "step" and r[key] == incarnation]


def with_generations(records: list[dict]) -> list[dict]:
    """``records`` (in time order) with ``generation``: 0, 1, ... for each group of processes that
    trained together, in the order the groups first appear. A group is an incarnation and the
    ``world`` the built-in trainer journals (rank 0's pod and pid): a restart, in place or as a
    new incarnation, begins a new generation. Records without a world group by incarnation."""
    order: dict[tuple, int] = {}
    for r in records:
        r["generation"] = order.setdefault((r["incarnation"], r.get("world")), len(order))
    return records


def records_by(journal_dir: pathlib.Path, key: str = "incarnation") -> list[dict]:
    recs = journal.read(journal_dir)
    return with_generations(recs) if key == "generation" else recs


def newest_generation(journal_dir: pathlib.Path) -> int:
    """The newest generation in the journal (-1: none yet)."""
    return max((r["generation"] for r in records_by(journal_dir, "generation")), default=-1)


def step_time(records: list[dict]) -> float:
    """Median time between consecutive step records of one process (0.05 s if unknown)."""
    by_writer: dict[tuple[str, int], list[float]] = {}
    for r in records:
        by_writer.setdefault(journal.writer(r), []).append(r["t"])
    gaps = sorted(b - a for ts in by_writer.values() for a, b in zip(ts, ts[1:]) if b > a)
    return gaps[len(gaps) // 2] if gaps else 0.05


def at_random_moment(rng: random.Random, journal_dir: pathlib.Path, incarnation: Callable[[], int], *,
                     min_steps: int = 2, max_steps: int = 20, after_incarnation: int = -1,
                     after_t: float = 0.0, timeout: float = 600, alive: Callable[[], bool] = lambda: True,
                     key: str = "incarnation") -> dict:
    """Block until a random moment of real training in the current incarnation.

    Waits for an incarnation newer than ``after_incarnation`` (the one the previous
    fault hit) to compute ``rng.randint(min_steps, max_steps)`` steps (a newer
    incarnation seen meanwhile starts the count again), then a random fraction of one
    step. Only steps recorded after ``after_t`` (wall clock) count. ``key="generation"``:
    ``incarnation`` and ``after_incarnation`` are generations (``with_generations``), so a
    restart in place counts as new. Returns what was seen (incarnation, step, the step
    time; the generation with that key) for the record."""
    want = rng.randint(min_steps, max_steps)
    frac = rng.random()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        inc = incarnation()
        if inc <= after_incarnation:
            time.sleep(0.05)
            continue
        recs = [r for r in records_by(journal_dir, key) if r["event"] == "step" and r[key] == inc and r["t"] > after_t]
        steps = sorted({r["step"] for r in recs})
        if len(steps) >= want:
            dt = step_time(recs)
            time.sleep(frac * dt)
            return {"incarnation": recs[-1]["incarnation"], key: inc, "step": steps[-1],
                    "steps_into_incarnation": len(steps), "step_time_s": dt, "fraction_of_step": frac}
        time.sleep(0.02)
    if not alive():
        raise TimeoutError(f"the job ended before {want} training steps of a new moment were seen")
    raise TimeoutError(f"no {want} training steps seen within {timeout}s")


# ---------------------------------------------------------------- what the journal says


def computed_steps(journal_dir: pathlib.Path, rank: int = 0) -> list[int]:
    """Every step ``rank`` computed, over all its processes, sorted, repeats kept: a step
    computed twice is in here twice (the trainer's metrics file is trimmed on resume and
    cannot show it)."""
    return sorted(r["step"] for r in journal.read(journal_dir) if r["event"] == "step" and r["rank"] == rank)


def saves_overlapping(records: list[dict], start: float, end: float, interval: int, rank: int = 0,
                      *, finished_only: bool = False) -> list[int]:
    """Checkpoint steps (every ``interval``) whose save was in flight at some moment of
    [start, end]: the step was computed (its save began) before ``end`` and its outcome
    came after ``start``, or never. With ``finished_only`` a save must have an outcome (ok
    or failed) in the journal: once the job has ended, "never" means no save happened at
    that step at all (a deliberate break, saves turned off, passed without it)."""
    begun = {r["step"]: r["t"] for r in records if r["event"] == "step" and r["rank"] == rank
             and r["step"] % interval == 0}
    done = {r["step"]: r["t"] for r in records if r["event"] == "checkpoint" and r["rank"] == rank}
    if finished_only:
        begun = {s: t for s, t in begun.items() if s in done}
    return sorted(s for s, t in begun.items() if t <= end and done.get(s, float("inf")) >= start)


def resumed_steps(journal_dir: pathlib.Path) -> list[int]:
    """Where each restored process resumed (rank 0's view), in order."""
    return [r["step"] for r in journal.read(journal_dir) if r["event"] == "resumed" and r["rank"] == 0]


def incarnation_summary(records: list[dict], key: str = "incarnation") -> list[dict]:
    """Per incarnation (or generation, with ``key``; in order): where it resumed (None: from
    scratch) and from which tier ("s3" or "memory": the pods' in-memory tier), the steps it
    computed, the last step it computed, and the commits it saw."""
    out: dict[int, dict] = {}
    for r in records:
        inc = out.setdefault(r[key], {"incarnation": r["incarnation"], key: r[key], "resumed": None, "steps": set(),
                                      "commits": set(), "first_t": r["t"], "resumed_t": None, "tier": None})
        if r["event"] in ("resumed", "resumed_from_memory"):
            inc["resumed"] = r["step"] if inc["resumed"] is None else inc["resumed"]
            inc["resumed_t"] = r["t"] if inc["resumed_t"] is None else min(inc["resumed_t"], r["t"])
            inc["tier"] = inc["tier"] or ("memory" if r["event"] == "resumed_from_memory" else "s3")
        elif r["event"] == "step":
            inc["steps"].add(r["step"])
        elif (r["event"] == "checkpoint" and r.get("ok")) or r["event"] == "committed":
            inc["commits"].add(r["step"])
    return [out[k] for k in sorted(out)]


def recovery_facts(records: list[dict], stored: dict[int, float] | None = None, key: str = "incarnation") -> list[dict]:
    """For every restart (an incarnation after the first): where it resumed, the newest
    step committed before it resumed, the steps the previous incarnations computed past
    its resume point (recomputed now), and the steps they computed after that commit
    (the bound on what a restart may recompute).

    A commit is known from the journal (a save's outcome, recorded after its COMMITTED
    marker is written) or, with ``stored`` (step -> the marker's LastModified, seen in
    the bucket while the job ran), from storage: a process killed between writing the
    marker and journalling the outcome leaves a commit only storage knows of. A stored
    commit counts for a restart only if its marker was written before the restart
    resumed (``witness`` says which source vouched for the resume step).

    A restore from the in-memory tier (``tier`` "memory") resumes from a step never committed:
    ``memory_ok`` says it is one an earlier generation computed and not older than the newest
    commit (the tier's choice rule), and ``recomputed_last``, the steps past its resume point that the
    newest earlier generation to compute any computed, is bounded by the tier's interval (``recomputed``
    also counts steps an older failure had already lost, which that failure's own bound covers)."""
    incs = incarnation_summary(records, key)
    facts = []
    committed: set[int] = set()
    computed: set[int] = set()
    last_steps: set[int] = set()
    for i, inc in enumerate(incs):
        if i > 0:
            at = inc["resumed_t"] if inc["resumed_t"] is not None else inc["first_t"]
            from_storage = {s for s, t in (stored or {}).items() if t <= at}
            known = committed | from_storage
            newest = max(known, default=None)
            resumed = inc["resumed"] or 0
            last = max(computed, default=0)
            facts.append({"incarnation": inc["incarnation"], key: inc[key], "resumed": inc["resumed"],
                          "newest_commit": newest,
                          "recomputed": len({s for s in computed if s > resumed}),
                          "recomputed_last": len({s for s in last_steps if s > resumed}),
                          "since_commit": max(0, last - (newest or 0)),
                          "resumed_committed": inc["resumed"] is None or inc["resumed"] in known,
                          "tier": inc["tier"], "memory_ok": inc["tier"] == "memory" and resumed in computed
                          and resumed >= (newest or 0),
                          "witness": "journal" if inc["resumed"] in committed else
                          "storage" if inc["resumed"] in from_storage else None})
        committed |= {c for c in inc["commits"]}
        computed |= inc["steps"]
        last_steps = inc["steps"] or last_steps
    return facts


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name
