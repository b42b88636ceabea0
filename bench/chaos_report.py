"""The chaos suite's table and verdicts (bench/chaos.py): per fault kind, how many were
injected and what became of their jobs; the failures a run reports."""
from __future__ import annotations

import statistics


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def table(jobs: list[dict]) -> list[dict]:
    rows = []
    kinds = sorted({s["kind"] for j in jobs for s in tried(j)})
    for kind in kinds:
        js = [j for j in jobs if any(s["kind"] == kind for s in tried(j))]
        ss = [s for j in js for s in tried(j) if s["kind"] == kind]
        det = [s["detect_s"] for s in ss if s.get("detect_s") is not None]
        rec = [s["recover_s"] for s in ss if s.get("recover_s") is not None]

        def frac(key: str) -> str:
            return f"{sum(1 for j in js if j[key])}/{len(js)}"

        def stats(v: list[float]) -> str:
            return "-" if not v else f"{statistics.median(v):.1f}/{pct(v, 0.95):.1f}/{max(v):.1f}"

        rows.append({"kind": kind, "injected": injected(kind, ss),
                     "jobs Succeeded": frac("succeeded"),
                     "identical": frac("identical"), "resumed from newest commit": frac("newest_commit"),
                     "detect p50/p95/max s": stats(det), "recover p50/p95/max s": stats(rec)})
    return rows


def injected(kind: str, ss: list[dict]) -> str | int:
    """How many; for the kinds that may land off target, how many landed on it."""
    if kind == "double":
        return f"{len(ss)} ({sum(1 for s in ss if s.get('second_landed'))} both landed)"
    if kind == "kill_during_save":
        return f"{len(ss)} ({sum(1 for s in ss if s.get('mid_save'))} mid-save)"
    return len(ss)


def failures(jobs: list[dict]) -> list[str]:
    keys = ("succeeded", "identical", "newest_commit", "recompute_bounded", "pods_ok", "budget_ok")
    return [f"{j['job']} ({j['config']}): " + ", ".join(k for k in keys if not j[k]) for j in jobs
            if not all(j[k] for k in keys)] + [
        f"{j['job']}: fault {s['kind']} not injected: {s.get('error') or 'nothing to hit'}"
        + (" (the job had ended)" if s.get("job_ended") else "")
        for j in jobs for s in tried(j) if s.get("error") or not s.get("hit")]


def tried(job: dict) -> list[dict]:
    """A job's fault samples less those that moved to the next job (``Suite.run_all``)."""
    return [s for s in job["samples"] if not s.get("moved_to_next_job")]


def landed(job: dict) -> list[dict]:
    return [s for s in tried(job) if s.get("hit") and not s.get("error")]
