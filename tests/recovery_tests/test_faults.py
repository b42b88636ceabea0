"""The journal arithmetic the random-fault tests and bench/chaos.py judge recoveries by
(tests/recovery_tests/faults.py): where each restart resumed, the newest commit before
it, what it recomputed and the bound on that. Pure: records made up here."""
from __future__ import annotations

from tests.recovery_tests import faults as F


def rec(inc: int, event: str, step: int, t: float, ok: bool = True, pid: int | None = None) -> dict:
    r = {"incarnation": inc, "event": event, "step": step, "t": t, "pod": f"j-worker-0-{inc}", "rank": 0,
         "pid": pid or 100 + inc}
    if event == "checkpoint":
        r["ok"] = ok
    return r


def run(inc: int, first: int, last: int, t0: float, resumed: int | None = None, commits=(), failed=(),
        from_memory: bool = False) -> list[dict]:
    out = [rec(inc, "resumed_from_memory" if from_memory else "resumed", resumed, t0)] if resumed is not None else []
    for s in range(first, last + 1):
        out.append(rec(inc, "step", s, t0 + s))
        if s in commits or s in failed:
            out.append(rec(inc, "checkpoint", s, t0 + s + 0.5, ok=s in commits))
    return out


def test_a_restart_from_the_newest_commit_recomputes_only_the_steps_after_it():
    recs = run(0, 1, 13, 0, commits=(5, 10)) + run(1, 11, 20, 100, resumed=10, commits=(15, 20))
    [f] = F.recovery_facts(recs)
    assert f == {"incarnation": 1, "resumed": 10, "newest_commit": 10, "recomputed": 3, "since_commit": 3,
                 "resumed_committed": True, "witness": "journal", "tier": "s3", "memory_ok": False,
                 "recomputed_last": 3}


def test_resuming_from_an_older_commit_or_a_failed_save_is_visible():
    older = run(0, 1, 13, 0, commits=(5, 10)) + run(1, 6, 20, 100, resumed=5)
    [f] = F.recovery_facts(older)
    assert f["resumed"] == 5 and f["newest_commit"] == 10 and f["recomputed"] == 8 > f["since_commit"] == 3
    uncommitted = run(0, 1, 13, 0, commits=(5,), failed=(10,)) + run(1, 11, 20, 100, resumed=10)
    [f] = F.recovery_facts(uncommitted)
    assert not f["resumed_committed"] and f["newest_commit"] == 5


def test_a_commit_only_storage_saw_vouches_for_a_resume_if_its_marker_came_before_the_resume():
    """Found by the short chaos profile in CI (seed 803745250, pipeline job): the operator was
    killed at step 10 and the restart resumed from 10, whose COMMITTED marker was written but
    whose outcome the killed trainers never journalled; the journal-only witness called that
    an uncommitted resume. The bucket's markers (LastModified, watched during the run) vouch
    for it; a marker written after the resume, or none, still fails."""
    recs = run(0, 1, 13, 0, commits=(5,)) + run(1, 11, 20, 100, resumed=10)
    [f] = F.recovery_facts(recs, stored={5: 5.6, 10: 10.7})
    assert f["resumed_committed"] and f["newest_commit"] == 10 and f["witness"] == "storage"
    assert f["recomputed"] == 3 == f["since_commit"]
    [f] = F.recovery_facts(recs, stored={5: 5.6, 10: 100.5})           # marker after the resume record
    assert not f["resumed_committed"] and f["newest_commit"] == 5 and f["witness"] is None
    [f] = F.recovery_facts(recs)                                        # no storage view: journal only
    assert not f["resumed_committed"]
    # the coordinator journals the commit as its marker is stored (before telling the others)
    [f] = F.recovery_facts(recs + [rec(0, "committed", 10, 10.8)])
    assert f["resumed_committed"] and f["witness"] == "journal"
    # a newer commit only storage saw, skipped by the resume, is caught too
    older = run(0, 1, 13, 0, commits=(5,)) + run(1, 6, 20, 100, resumed=5)
    [f] = F.recovery_facts(older, stored={5: 5.6, 10: 10.7})
    assert f["resumed_committed"] and f["newest_commit"] == 10 != f["resumed"]


def test_a_restore_from_the_memory_tier_is_judged_by_the_tier_rule_not_the_commit_rule():
    """A restart in place from the pods' memory resumes at a step never committed: it must be one
    an earlier generation computed and not older than the newest commit (bench/chaos.py's memory
    profile then bounds the recomputed steps by the tier's interval)."""
    def memory_restart(resumed: int) -> dict:
        recs = run(0, 1, 13, 0, commits=(5, 10)) + run(1, resumed + 1, 20, 100, resumed=resumed, from_memory=True)
        [f] = F.recovery_facts(recs)
        return f

    f = memory_restart(12)
    assert f["tier"] == "memory" and f["memory_ok"] and f["recomputed"] == 1 and not f["resumed_committed"]
    assert not memory_restart(8)["memory_ok"]       # older than the newest commit (10): S3 was newer
    assert not memory_restart(14)["memory_ok"]      # a step nobody computed
    [f] = F.recovery_facts(run(0, 1, 13, 0, commits=(5, 10)) + run(1, 11, 20, 100, resumed=10))
    assert f["tier"] == "s3" and not f["memory_ok"]


def test_a_memory_restore_is_bounded_by_what_the_generation_before_it_computed():
    """Chaos (memory profile, seed 199077543): generation 0 computed 1-13, a restart from S3 at 5
    computed 6-12, and the next restored 11 from memory. Steps 12 and 13 are both past 11, but 13 was
    lost at the first failure (bounded by that restart's since_commit); the memory restore lost 12."""
    recs = (run(0, 1, 13, 0, commits=(5,)) + run(1, 6, 12, 100, resumed=5)
            + run(2, 12, 20, 200, resumed=11, from_memory=True))
    first, second = F.recovery_facts(recs)
    assert (first["recomputed"], first["since_commit"]) == (8, 8)
    assert second["tier"] == "memory" and second["memory_ok"]
    assert (second["recomputed"], second["recomputed_last"]) == (2, 1)
    nothing = run(0, 1, 13, 0, commits=(5,)) + run(1, 6, 12, 100, resumed=5) + [rec(2, "resumed", 5, 150)]
    nothing += run(3, 12, 20, 200, resumed=11)
    assert F.recovery_facts(nothing)[-1]["recomputed_last"] == 1   # a generation that computed nothing: the one before


def test_a_restart_before_any_commit_starts_from_scratch_and_may_redo_everything():
    recs = run(0, 1, 4, 0) + run(1, 1, 20, 100)
    [f] = F.recovery_facts(recs)
    assert f["resumed"] is None and f["newest_commit"] is None and f["resumed_committed"]
    assert f["recomputed"] == 4 == f["since_commit"]


def test_computed_steps_keep_repeats(tmp_path):
    from stoker.worker.journal import StepJournal

    for inc, steps in ((0, (1, 2, 3)), (1, (3, 4))):
        j = StepJournal(tmp_path, job="j", incarnation=inc, pod=f"j-worker-0-{inc}", rank=0)
        for s in steps:
            j.record("step", s)
        j.close()
    assert F.computed_steps(tmp_path) == [1, 2, 3, 3, 4]


def test_a_save_overlaps_an_outage_when_it_was_in_flight_during_it():
    recs = run(0, 1, 30, 0, commits=(5, 10, 25))  # step s at t=s, its commit at s + 0.5; 15, 20 never commit
    assert F.saves_overlapping(recs, 10.2, 10.4, interval=5) == [10]        # 10's upload in flight
    assert F.saves_overlapping(recs, 11.0, 14.0, interval=5) == []          # between saves
    assert F.saves_overlapping(recs, 16.0, 17.0, interval=5) == [15]        # 15 never committed
    assert F.saves_overlapping(recs, 26.0, 27.0, interval=5) == [15, 20]
    assert F.saves_overlapping(recs, 16.0, 17.0, interval=5, finished_only=True) == []   # 15: no outcome


def test_a_restart_in_place_is_a_generation_of_its_own_though_the_incarnation_stays():
    """The built-in trainer journals its world (rank 0's pod and pid): a restart in place keeps the
    incarnation, so only the world tells its processes from those before it."""
    before = [dict(r, world="j-worker-0-0/100") for r in run(0, 1, 13, 0, commits=(5, 10))]
    after = [dict(r, world="j-worker-0-0/200", pid=200) for r in run(0, 11, 20, 100, resumed=10, commits=(15,))]
    recs = F.with_generations(before + after)
    assert F.recovery_facts(recs) == []                        # by incarnation: one, nothing to judge
    [f] = F.recovery_facts(recs, key="generation")
    assert f == {"incarnation": 0, "generation": 1, "resumed": 10, "newest_commit": 10, "recomputed": 3,
                 "since_commit": 3, "resumed_committed": True, "witness": "journal", "tier": "s3",
                 "memory_ok": False, "recomputed_last": 3}
    plain = F.with_generations(run(0, 1, 5, 0) + run(1, 6, 8, 50, resumed=5))   # no world: by incarnation
    assert [r["generation"] for r in plain] == [r["incarnation"] for r in plain]
