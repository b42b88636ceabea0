"""bench/bench_goodput.py's report: pure arithmetic over the raw runs it recorded."""
from __future__ import annotations

import pytest

from bench import bench_goodput as G


def run(kill_every, wall, productive, kills, checksum="c"):
    return {"run": G.setting(kill_every), "kill_every_s": kill_every, "kills": kills, "wall_s": wall,
            "productive_s": productive, "goodput": productive / wall, "checksum": checksum}


def test_each_setting_is_reported_as_median_and_range_and_a_failure_costs_its_idle_time():
    runs = [run(None, 100.0, 96.0, 0), run(None, 102.0, 97.0, 0), run(None, 104.0, 99.0, 0),
            run(120, 120.0, 96.0, 2), run(120, 130.0, 100.0, 3), run(120, 125.0, 101.0, 2, checksum="other")]
    results = {"runs": runs, "steps": 10, "ckpt_every": 5, "repeat": 3, "seed": 1}
    G.report(results)
    base, k120 = results["table"]
    assert base["setting"] == "undisturbed" and base["runs"] == 3 and base["same checksum"]
    assert base["goodput %"] == "95.2 [95.1, 96.0]"      # 96/100, 97/102, 99/104
    # undisturbed idle (wall - productive): 4, 5, 5 -> median 5; per kill: (24-5)/2, (30-5)/3, (24-5)/2
    costs = sorted(r["cost_per_failure_s"] for r in runs if "cost_per_failure_s" in r)
    assert costs == pytest.approx([25 / 3, 9.5, 9.5])
    assert k120["s per failure"] == "9.5 [8.3, 9.5]" and k120["kills"] == "2/3/2"
    assert k120["same checksum"] is False                 # one run ended with other parameters: said
    assert k120["goal 95%"] == "missed"
    assert results["derived_min_interval_for_95pct_s"] > 0


def test_the_time_not_training_is_split_into_start_between_steps_and_end(tmp_path):
    from stoker.worker.journal import StepJournal

    t0 = 1000.0
    for rank in (0, 1):  # steps 1..3 at t0 + 6, 7, 8.5 (rank 1 a little later)
        j = StepJournal(tmp_path, job="j", incarnation=0, pod=f"p{rank}", rank=rank)
        for step, t in ((1, 6.0), (2, 7.0), (3, 8.5)):
            j.record("step", step, t=t0 + t + 0.1 * rank)  # the moment given, not now
        j.record("checkpoint", 3, ok=True, t=t0 + 9.5)     # not a step: not the last step
        j.close()
    got = G.where_time_went(tmp_path, t0, wall=10.0, productive=2.0)
    # the first step of any rank at 6.0, the last at 8.6; 2.6 s between them, 2.0 of it training
    assert got == pytest.approx({"start_s": 6.0, "end_s": 1.4, "between_s": 0.6})
    runs = [run(None, 10.0, 2.0, 0) | got, run(None, 12.0, 2.0, 0)]  # a run written before the journal
    results = {"runs": runs, "steps": 3, "ckpt_every": 5, "repeat": 2, "seed": 1}
    G.report(results)
    assert results["table"][0]["start s"] == "6.0 [6.0, 6.0]"
