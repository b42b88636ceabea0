"""bench_operator_scale.py's report: medians and ranges per system, the side-by-side table with
ratios to bare pods and to Kubeflow, the goals (met or missed, never trimmed), and the top frames
of a py-spy profile of Stoker's operator."""
from __future__ import annotations

import collections
import statistics
from pathlib import Path
from typing import Any, Callable

GOAL_RSS_MIB = 300.0
GOAL_BARE_RATIO = 2.0


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def _stat(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


MEASURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "all_running_s": lambda s: s["all_running_s"],
    "job_p50_s": lambda s: _pct(s["job_s"], 50) if s["job_s"] else None,
    "job_p99_s": lambda s: _pct(s["job_s"], 99) if s["job_s"] else None,
    "operator_requests_per_job": lambda s: s["ramp"]["requests"] / _jobs(s) if "ramp" in s else 0.0,
    "requests_per_job": lambda s: s["client_requests_per_job"] + (s["ramp"]["requests"] / _jobs(s)
                                                                   if "ramp" in s else 0.0),
    "all_clients_requests_per_job": lambda s: s["all_clients_requests_per_job"],
    "operator_cpu_s": lambda s: s["cpu_ramp_s"] + s["cpu_hold_s"] if "cpu_ramp_s" in s else None,
    "operator_cpu_ramp_s": lambda s: s.get("cpu_ramp_s"),
    "operator_peak_rss_mib": lambda s: s.get("peak_rss_mib"),
    "status_writes_per_job_per_min": lambda s: (s["hold"]["status_writes"] / _jobs(s) / (s["hold_s"] / 60)
                                                if "hold" in s else 0.0),
}


def _jobs(s: dict[str, Any]) -> int:
    return len(s["job_s"]) or 1


def summarize_system(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: _stat([f(s) for s in samples]) for name, f in MEASURES.items()} | {"samples": len(samples)}


ROWS = (("all workers Running", "all_running_s", "s"), ("per job p50 (create -> all Running)", "job_p50_s", "s"),
        ("per job p99", "job_p99_s", "s"), ("API requests per job (operator + client)", "requests_per_job", ""),
        ("  of which the operator's", "operator_requests_per_job", ""),
        ("  every client's (apiserver_request_total)", "all_clients_requests_per_job", ""),
        ("operator CPU (start + hold)", "operator_cpu_s", "s"), ("operator peak RSS", "operator_peak_rss_mib", "MiB"),
        ("status writes per job per minute (Running)", "status_writes_per_job_per_min", ""))


def _fmt(st: dict[str, float] | None) -> str:
    if st is None:
        return "-"
    f = (lambda v: f"{v:.3g}") if st["max"] < 10 else (lambda v: f"{v:.1f}")
    return f"{f(st['median'])} [{f(st['min'])}, {f(st['max'])}]"


def _ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> str:
    if a is None or b is None or not b["median"]:
        return "-"
    return f"{a['median'] / b['median']:.2f}x"


def summary_rows(systems: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The side-by-side table (README: tests/test_readme.py checks it against the results file)."""
    rows = []
    for label, key, unit in ROWS:
        st, kf, bare = systems["stoker"][key], systems["kubeflow"][key], systems["bare"][key]
        rows.append({"measure": label + (f" ({unit})" if unit else ""), "bare pods": _fmt(bare),
                     "Stoker": _fmt(st), "Kubeflow v1.8.1": _fmt(kf), "Stoker / bare": _ratio(st, bare),
                     "Stoker / Kubeflow": _ratio(st, kf)})
    return rows


def paired_ratios(samples: list[dict[str, Any]], system: str = "stoker", base: str = "bare") -> list[float]:
    """``system``'s time to all Running over ``base``'s in the same repetition, per repetition (the
    machine's load moves both within a repetition; medians of each may pair a quiet run with a busy one)."""
    by_rep = {(s["system"], s["rep"]): s["all_running_s"] for s in samples if s["rep"] >= 0}
    return [round(by_rep[(system, r)] / by_rep[(base, r)], 2) for r in sorted({r for _, r in by_rep})
            if (system, r) in by_rep and (base, r) in by_rep and by_rep[(base, r)]]


def goals(systems: dict[str, dict[str, Any]], samples: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The issue's goals on the medians (RSS: the largest sample), each met or missed; with the
    samples, the bare-pods goal also in every repetition (paired)."""
    st, kf, bare = (systems[s]["all_running_s"]["median"] for s in ("stoker", "kubeflow", "bare"))
    rss = systems["stoker"]["operator_peak_rss_mib"]["max"]
    paired = paired_ratios(samples or [])
    return [
        {"goal": "Stoker's time to all workers Running <= Kubeflow's", "met": st <= kf,
         "measured": f"{st:.1f} s vs {kf:.1f} s (median)"},
        {"goal": f"Stoker's time to all workers Running <= {GOAL_BARE_RATIO:g}x bare pods'",
         "met": st <= GOAL_BARE_RATIO * bare, "measured": f"{st:.1f} s vs {bare:.1f} s = {st / bare:.2f}x (median)"},
        {"goal": f"Stoker operator peak RSS < {GOAL_RSS_MIB:g} MiB", "met": rss < GOAL_RSS_MIB,
         "measured": f"{rss:.0f} MiB (largest of the repetitions)"},
    ] + ([{"goal": f"Stoker's time to all workers Running <= {GOAL_BARE_RATIO:g}x bare pods' in every repetition "
                   "(paired)", "met": max(paired) <= GOAL_BARE_RATIO,
           "measured": "Stoker / bare per repetition: " + ", ".join(f"{r:.2f}x" for r in paired)}] if paired else [])


def top_frames(path: Path, n: int = 15) -> dict[str, Any]:
    """A py-spy raw (collapsed) profile: the functions with the most samples on the stack
    (inclusive) and at its top (self), over every thread."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")[1:]]   # the first frame is the thread
        k = int(count)
        total += k
        for f in set(frames):
            inclusive[f] += k
        if frames:
            own[frames[-1]] += k
    return {"samples": total, "inclusive": [[f, k, round(k / max(1, total), 3)] for f, k in inclusive.most_common(n)],
            "self": [[f, k, round(k / max(1, total), 3)] for f, k in own.most_common(n)]}
