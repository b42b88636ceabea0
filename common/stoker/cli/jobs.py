"""`stoker get`, `stoker describe JOB`, `stoker top`: what the on-call person
looks at first. Facts come from stoker.cli.facts (pure); this module fetches
and renders them (table, or the same facts as ``-o json|yaml``)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from stoker.common import labels as L

from . import common, facts
from .kubeclient import EXIT_OK, Kube
from .output import (FORMATS, dash, dumps, human_duration, human_rate, key_values, age_seconds, paint,
                     paint_state, table)


# ------------------------------------------------------------------------ get
GET_HEADERS = ["NAME", "PHASE", "WORKERS", "STEP", "TOKENS/S", "LAST CKPT", "RESTARTS", "HEALTH", "AGE"]


def _ckpt_cell(s: dict) -> str:
    ck = s.get("lastCheckpoint") or {}
    if ck.get("step") is None:
        return "-"
    age = ck.get("ageSeconds")
    return f"{human_duration(age)} ago (step {ck['step']})" if age is not None else f"step {ck['step']}"


def get_rows(summaries: list[dict], all_ns: bool, colour: bool) -> tuple[list[str], list[list[str]]]:
    headers = (["NAMESPACE"] if all_ns else []) + GET_HEADERS
    rows = []
    for s in summaries:
        w = s["workers"]
        row = [s["name"], paint_state(s["phase"], colour), f"{w['ready']}/{dash(w['desired'])}", dash(s["step"]),
               human_rate(s["tokensPerSecond"]), _ckpt_cell(s), str(s["restarts"]),
               paint_state(s["health"], colour), human_duration(s["ageSeconds"])]
        rows.append(([s["namespace"]] if all_ns else []) + row)
    return headers, rows


def _summaries(kube: Kube, args, name: str | None = None) -> list[dict]:
    ns = None if args.all_namespaces else args.namespace
    jobs = [kube.get_job(args.namespace, name)] if name else kube.list_jobs(ns, getattr(args, "selector", None))
    pods = kube.job_pods(None if args.all_namespaces else args.namespace, name)
    by_job: dict[tuple, list] = {}
    for p in pods:
        m = p["metadata"]
        by_job.setdefault((m["namespace"], m["labels"].get(L.JOB_NAME)), []).append(p)
    now = common.now()
    out = [facts.job_summary(j, by_job.get((j["metadata"]["namespace"], j["metadata"]["name"]), []), now)
           for j in jobs]
    return sorted(out, key=lambda s: (s["namespace"] or "", s["name"] or ""))


def cmd_get(args, kube: Kube) -> int:
    summaries = _summaries(kube, args, args.job)
    if args.output == "name":  # like kubectl: one TYPE/NAME per line, for scripts
        print("".join(f"{L.PLURAL[:-1]}.{L.GROUP}/{s['name']}\n" for s in summaries), end="")
        return EXIT_OK
    if args.output != "table":
        doc: Any = summaries[0] if args.job else {"items": summaries}
        print(dumps(doc, args.output))
        return EXIT_OK
    if not summaries:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No TrainingJobs in {where}.", file=sys.stderr)
        return EXIT_OK
    print(table(*get_rows(summaries, args.all_namespaces, args.colour)))
    return EXIT_OK


# ------------------------------------------------------------------- describe
def _events(kube: Kube, namespace: str, job: dict, pods: list[dict]) -> list[dict]:
    names = {job["metadata"]["name"]} | {p["metadata"]["name"] for p in pods}
    items = kube.get(f"/api/v1/namespaces/{namespace}/events").get("items", [])
    now = common.now()
    out = []
    for e in items:
        obj = e.get("involvedObject") or {}
        if obj.get("name") not in names or obj.get("kind") not in ("TrainingJob", "Pod"):
            continue
        t = e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp")
        out.append({"time": t, "ageSeconds": age_seconds(t, now), "type": e.get("type"), "reason": e.get("reason"),
                    "object": f"{obj.get('kind', '').lower()}/{obj.get('name')}", "count": e.get("count") or 1,
                    "message": (e.get("message") or "").strip()})
    out.sort(key=lambda e: e["time"] or "")
    return out[-20:]


def describe_doc(kube: Kube, namespace: str, name: str) -> dict:
    job = kube.get_job(namespace, name)
    pods = kube.job_pods(namespace, name)
    now = common.now()
    st = job.get("status") or {}
    conds = [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"),
              "message": c.get("message"), "lastTransitionTime": c.get("lastTransitionTime")}
             for c in st.get("conditions") or []]
    return {
        "job": facts.job_summary(job, pods, now),
        "spec": facts.spec_summary(job),
        "status": {"reason": st.get("reason"), "message": st.get("message"), "restarts": st.get("restarts") or {},
                   "metricsUpdateTime": (st.get("metrics") or {}).get("updateTime"),
                   "startTime": st.get("startTime"), "lastRestartTime": st.get("lastRestartTime")},
        "workers": facts.worker_rows(job, pods, now),
        "conditions": conds,
        "incidents": facts.incident_rows(job),
        "events": _events(kube, namespace, job, pods),
    }


def _secs(v) -> str:
    return "-" if v is None else f"{v:.1f}s"


def render_describe(d: dict, colour: bool) -> str:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    j, sp, st = d["job"], d["spec"], d["status"]
    out = []
    r = st.get("restarts") or {}
    out.append(key_values([
        ("Name", j["name"]), ("Namespace", j["namespace"]),
        ("Phase", paint_state(j["phase"], colour)),
        ("Health", paint_state(j["health"], colour) + (f" ({j['healthReason']})" if j["healthReason"] else "")),
        ("Reason", dash(st.get("reason"))), ("Message", dash(st.get("message"))),
        ("Age", human_duration(j["ageSeconds"])), ("Incarnation", j["incarnation"]),
        ("Restarts", f"{j['restarts']} total (userError {r.get('userError', 0)}, "
                     f"infrastructure {r.get('infrastructure', 0)}, preemption {r.get('preemption', 0)})"),
    ]))
    rng = f" (min {dash(sp['minReplicas'])}, max {dash(sp['maxReplicas'])})" if sp["maxReplicas"] else " (not elastic)"
    ck = sp.get("checkpoint") or {}
    every = ", ".join(x for x in (f"every {ck['intervalSteps']} steps" if ck.get("intervalSteps") else "",
                                  f"every {ck['intervalSeconds']}s" if ck.get("intervalSeconds") else "") if x)
    fp = sp.get("failurePolicy") or {}
    out.append("\nSpec:")
    out.append(key_values([
        ("Replicas", f"{dash(sp['replicas'])}{rng}, {dash(sp['nprocPerNode'])} proc/worker"),
        ("Image", dash(sp["image"])), ("Command", dash(sp["command"])),
        ("Checkpoint", f"{ck['uri']} ({every}, keep {ck.get('keep', '-')})" if ck.get("uri") else "-"),
        ("Credentials", f"Secret {sp['credentialsSecret']}" if sp["credentialsSecret"] else "-"),
        ("Failure policy", f"maxRestarts {fp.get('maxRestarts', '-')}, backoff {fp.get('backoffSeconds', '-')}s, "
                           f"heartbeat timeout {fp.get('heartbeatTimeoutSeconds', '-')}s"),
        ("Suspend", str(sp["suspend"]).lower()),
    ], indent=2))
    lc = j.get("lastCheckpoint") or {}
    out.append("\nProgress:")
    out.append(key_values([
        ("Step", dash(j["step"])), ("Tokens/s", human_rate(j["tokensPerSecond"])),
        ("Loss", dash(j["loss"])),
        ("Metrics updated", f"{human_duration(age_seconds(st.get('metricsUpdateTime'), now))} ago"
                            if st.get("metricsUpdateTime") else "-"),
        ("Last checkpoint", f"step {lc['step']}, {human_duration(lc.get('ageSeconds'))} ago, {dash(lc.get('uri'))}"
                            if lc.get("step") is not None else "none yet"),
    ], indent=2))
    out.append("\nWorkers:")
    if d["workers"]:
        rows = [[dash(w["rank"]), w["pod"], dash(w["node"]), paint_state(w["phase"], colour),
                 "yes" if w["ready"] else "no", w["restarts"],
                 f"{human_duration(w['heartbeatAgeSeconds'])} ago" if w["heartbeatAgeSeconds"] is not None else "-",
                 dash(w["step"])] for w in d["workers"]]
        out.append(_indent(table(["RANK", "POD", "NODE", "PHASE", "READY", "RESTARTS", "HEARTBEAT", "STEP"], rows)))
    else:
        out.append("  <none>")
    out.append("\nConditions:")
    if d["conditions"]:
        rows = [[c["type"], c["status"], dash(c["reason"]),
                 human_duration(age_seconds(c["lastTransitionTime"], now)), dash(c["message"])] for c in d["conditions"]]
        out.append(_indent(table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows)))
    else:
        out.append("  <none>")
    out.append("\nIncidents:")
    if d["incidents"]:
        rows = []
        for i in d["incidents"]:
            where = " ".join(f"{k}={i[k]}" for k in ("rank", "pod", "node", "exitCode", "step") if i.get(k) is not None)
            recovered = (f"after {_secs(i['timeToRecoverSeconds'])}" if i.get("recoveredAt") else
                         paint("not yet", "yellow", colour) if i.get("kind") in ("Restart", "Replace") else "-")
            kind = f"{i['kind']} (in place)" if i.get("inPlace") else i["kind"]
            rows.append([dash(i["time"]), dash(kind), dash(i["cause"]), dash(i["detectedCause"]),
                         dash(where), _secs(i["detectionLatencySeconds"]), recovered, dash(i["message"])[:120]])
        out.append(_indent(table(["TIME", "KIND", "CAUSE", "DETECTED", "WHERE", "DETECT LATENCY", "RECOVERED",
                                  "MESSAGE"], rows)))
        said = next((i for i in reversed(d["incidents"]) if i.get("error")), None)
        if said:  # what the failed trainer said last (its termination message / log tail)
            out.append(f"\n  Last error ({said['time']}, {said.get('pod') or '-'}):")
            out.append(_indent(said["error"], 4))
    else:
        out.append("  <none>")
    out.append("\nEvents:")
    if d["events"]:
        rows = [[human_duration(e["ageSeconds"]), dash(e["type"]), dash(e["reason"]), e["object"],
                 e["message"][:160]] for e in d["events"]]
        out.append(_indent(table(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows)))
    else:
        out.append("  <none>")
    return "\n".join(out)


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def cmd_describe(args, kube: Kube) -> int:
    d = describe_doc(kube, args.namespace, args.job)
    print(dumps(d, args.output) if args.output != "table" else render_describe(d, args.colour))
    return EXIT_OK


# ------------------------------------------------------------------------ top
def top_doc(kube: Kube, args) -> dict:
    ns = None if args.all_namespaces else args.namespace
    jobs = kube.list_jobs(ns)
    pods = kube.job_pods(ns)
    now = common.now()
    items = []
    for j in sorted(jobs, key=lambda j: (j["metadata"]["namespace"], j["metadata"]["name"])):
        mine = [p for p in pods if p["metadata"]["namespace"] == j["metadata"]["namespace"]
                and p["metadata"]["labels"].get(L.JOB_NAME) == j["metadata"]["name"]]
        items.append({**facts.job_summary(j, mine, now), "workerDetails": facts.worker_rows(j, mine, now)})
    return {"time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "items": items}


def render_top(doc: dict, all_ns: bool, colour: bool) -> str:
    if not doc["items"]:
        return f"{doc['time']}  no TrainingJobs"
    headers, rows = get_rows(doc["items"], all_ns, colour)
    lines = [f"{doc['time']}  {len(doc['items'])} job(s)", ""]
    body = table(headers, rows).splitlines()
    lines.append(body[0])
    for s, line in zip(doc["items"], body[1:]):
        lines.append(line)
        if training_line(s):
            lines.append("    " + training_line(s))
        for w in s["workerDetails"]:
            hb = f"hb {human_duration(w['heartbeatAgeSeconds'])} ago" if w["heartbeatAgeSeconds"] is not None else ""
            step = f"step {w['step']}" if w["step"] is not None else ""
            lines.append("    " + "  ".join(x for x in (
                f"rank {dash(w['rank'])}", w["pod"], f"on {dash(w['node'])}", paint_state(w["phase"], colour),
                "ready" if w["ready"] else "not ready", f"restarts {w['restarts']}", step, hb) if x))
    return "\n".join(lines)


def training_line(s: dict) -> str:
    """loss, validation loss, gradient norm, learning rate, data and collective wait, GPU, anomalies:
    what is known."""
    t = s.get("training") or {}
    parts = [f"{name} {fmt(v)}" for name, v, fmt in (
        ("loss", s.get("loss"), "{:.4g}".format), ("val", t.get("valLoss"), "{:.4g}".format),
        ("grad-norm", t.get("gradNorm"), "{:.3g}".format), ("lr", t.get("learningRate"), "{:.3g}".format),
        ("data-wait", t.get("dataWaitFraction"), "{:.0%}".format),
        ("comm-wait", t.get("collectiveWaitFraction"), "{:.0%}".format),
        ("gpu", t.get("gpuUtilization"), "{:.0%}".format),
        ("gpu-mem", t.get("gpuMemoryBytes"), lambda b: f"{b / 2**30:.1f}GiB")) if v is not None]
    if s.get("anomalies"):
        parts.append(f"anomalies {s['anomalies']} (rollbacks {s.get('rollbacks', 0)})")
    return "  ".join(parts)


def cmd_top(args, kube: Kube) -> int:
    n = 1 if args.once else args.iterations
    i = 0
    tty = sys.stdout.isatty()
    while n is None or i < n:
        doc = top_doc(kube, args)
        if args.output == "json":
            import json

            print(json.dumps(doc, default=str), flush=True)   # one JSON document per line
        elif args.output == "yaml":
            print("---\n" + dumps(doc, "yaml"), flush=True)
        else:
            if tty and n != 1:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(render_top(doc, args.all_namespaces, args.colour), flush=True)
            if n is None or i + 1 < n:
                print(flush=True)
        i += 1
        if n is None or i < n:
            time.sleep(args.interval)
    return EXIT_OK


def add_parser(sub) -> None:
    p = common.add(sub, "get", cmd_get, "list TrainingJobs (phase, workers, step, tokens/s, last checkpoint, health)",
                   formats=(*FORMATS, "name"))
    p.add_argument("job", nargs="?", help="one job (default: all in the namespace)")
    p.add_argument("-l", "--selector", default=None, metavar="SELECTOR",
                   help="only jobs whose labels match (kubectl syntax: team=nlp,tier!=test)")
    p = common.add(sub, "describe", cmd_describe,
                   "one job in detail: spec, workers, last checkpoint, conditions, incidents, events")
    p.add_argument("job")
    p = common.add(sub, "top", cmd_top, "live view of the jobs and their workers (Ctrl-C to stop)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true", help="print once and exit")
    g.add_argument("--iterations", type=_positive, default=None, help="refresh N times, then exit")


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n

