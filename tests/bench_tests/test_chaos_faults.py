"""Pure parts of the chaos suite's fault kinds (bench/chaos_faults.py)."""
from __future__ import annotations

from bench import chaos_faults as K


def _save(pid: int, step: int, t: float, took: float) -> list[dict]:
    return [{"event": "step", "pid": pid, "step": step, "t": t},
            {"event": "checkpoint", "pid": pid, "step": step, "t": t + took, "ok": True}]


def test_save_time_ignores_saves_that_waited_out_an_s3_outage():
    # seed 837048268: two saves slowed by a 10 s outage made the median 17 s, so the
    # "kill during a save" came 145 steps after its save and the job ended first
    recs = _save(1, 5, 100.0, 0.2) + _save(1, 10, 101.0, 17.0) + _save(1, 15, 118.5, 17.2) + _save(1, 20, 136.0, 0.3)
    assert K._save_seconds(recs) > 8.0
    assert abs(K._save_seconds(recs, since=135.0) - 0.3) < 1e-9   # only the save begun after the outage ended
    assert K._save_seconds(recs, since=200.0) == 0.3       # none known: the default


def test_references_run_once_per_config_and_come_back_from_the_disk_cache(tmp_path):
    import json

    from bench.chaos_refs import References

    runs = []

    def run(tmp, cfg, nproc):
        runs.append(cfg["steps"])
        tmp.mkdir(parents=True)
        (tmp / "summary.json").write_text(json.dumps({"checksum": f"c{cfg['steps']}", "step": cfg["steps"]}))
        return tmp

    refs = References(run, tmp_path / "a", cache=tmp_path / "cache")
    refs.want("x", {"steps": 5})
    assert refs.checksum("x", {"steps": 5}) == "c5" and refs.checksum("y", {"steps": 6}) == "c6"
    assert refs.checksum("x", {"steps": 5}) == "c5" and runs == [5, 6]      # once per key in a run
    again = References(run, tmp_path / "b", cache=tmp_path / "cache")
    assert again.checksum("x", {"steps": 5}) == "c5" and runs == [5, 6]     # the next run: from disk
    assert [s["cached"] for s in again.samples] == [True]
    assert again.checksum("z", {"steps": 5, "debug": {"a": 1}}) == "c5" and runs == [5, 6]  # debug is not the run's


def test_a_fault_is_not_credited_with_the_restart_the_next_fault_caused():
    from bench.chaos_monitor import attach_latency

    recs = [{"event": "step", "incarnation": 1, "generation": 1, "t": 150.0, "step": 30}]
    outage = {"t0": 100.0, "expect": K.NO_RESTART}
    attach_latency(outage, [143.0], recs, until=141.7)         # the next fault's kill at 141.7
    assert outage["detect_s"] is None and outage["recover_s"] is None
    kill = {"t0": 141.7, "expect": K.RESTARTS, "incarnation": 0, "generation": 0}
    attach_latency(kill, [143.0], recs)
    assert round(kill["detect_s"], 1) == 1.3 and round(kill["recover_s"], 1) == 8.3


def test_a_during_recovery_fault_began_at_its_first_kill():
    # the default run credited an S3 outage with a during_recovery's first kill (t0 is its second)
    from bench.chaos_monitor import injected_at

    assert injected_at({"t0": 110.0, "first": {"t0": 102.0}}) == 102.0
    assert injected_at({"t0": 110.0}) == 110.0 and injected_at({}) == float("inf")


def test_a_fault_whose_process_is_gone_waits_for_the_next_incarnation():
    """chaos-7 of the default run: the process of the moment's incarnation was gone (the
    job was restarting), and the fault was counted as not injected."""
    import random

    moments = iter([{"incarnation": 2, "generation": 4}, {"incarnation": 3, "generation": 5}])
    ctx = K.Ctx(rng=random.Random(1), job="j", replicas=2, journal_dir=None, incarnation=lambda: 3,
                finished=lambda: False, pod_node=None, lose_node=None, kill_operator=None, start_operator=None,
                operator_pid=None, stop_s3=None, start_s3=None, s3_outage_s=(1, 2))
    ctx.moment = lambda: next(moments)
    pids = {"j-worker-0-3": 42, "j-worker-1-3": 43}
    m, pod, pid = K._process_at_moment(ctx, pids.get)
    assert m == {"incarnation": 3, "generation": 5, "retried": 1} and pid in (42, 43) and ctx.after_generation == 4



def test_a_fault_its_job_ended_before_moves_to_the_next_job_once():
    """Short run, seed 1044582412: a launcher kill's orphaned trainers finished the demo job,
    and the node loss planned after it could not land: 9 of the profile's 10 faults."""
    from bench.chaos import Suite
    from bench.chaos_report import failures, landed

    def sample(kind: str, hit: bool) -> dict:
        return {"kind": kind, "hit": hit, **({} if hit else {"job_ended": True})}

    runs = iter([
        (["a", "b", "c"], [sample("a", True), sample("b", False)], [1, 2]),   # b missed, c never tried
        (["b", "c", "d"], [sample("b", False), sample("c", True), sample("d", False)], [0, 2]),
        (["d"], [sample("d", True)], []),                                    # one more job for d
    ])
    suite, seen = Suite(None, None, {}, None, None), []

    def run_job(n: int, kinds: list[str]) -> dict:
        want, samples, missed = next(runs)
        assert kinds == want
        return {"job": f"j{n}", "samples": samples, "missed": missed, **dict.fromkeys(
            ("succeeded", "identical", "newest_commit", "recompute_bounded", "pods_ok", "budget_ok"), True)}

    suite.run_job = run_job
    jobs = suite.run_all([["a", "b", "c"], ["d"]], seen.append)
    assert [j["job"] for j in jobs] == [j["job"] for j in seen] == ["j0", "j1", "j2"]
    assert sum(len(landed(j)) for j in jobs) == 3                          # a, c, d
    assert failures(jobs) == ["j1: fault b not injected: nothing to hit (the job had ended)"]   # missed twice
