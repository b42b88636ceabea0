"""`stoker drain NODE`: move Stoker training off a node with the least lost work.

1. cordon the node (spec.unschedulable=true), so replacements land elsewhere;
2. ask every TrainingJob with a worker on it to checkpoint now (the
   checkpoint-request annotation) and wait up to ``--checkpoint-timeout``
   seconds for status.lastCheckpoint to pass the request (a job that does not
   answer in time is drained anyway: it resumes from its last checkpoint);
3. delete those worker pods; the operator recreates them on other nodes.

Other pods on the node are left alone (listed). ``--dry-run`` only prints the
plan. Not a replacement for `kubectl drain` (no eviction API / PDBs)."""
from __future__ import annotations

import sys

from . import common, facts
from .actions import request_checkpoint, wait_checkpoint
from .kubeclient import EXIT_NOT_FOUND, EXIT_OK, ApiError, CliError, Kube, EXIT_TIMEOUT
from .output import dumps


def _node(kube: Kube, name: str) -> dict:
    try:
        return kube.get(f"/api/v1/nodes/{name}")
    except ApiError as e:
        if e.status != 404:
            raise
    names = [n["metadata"]["name"] for n in kube.get("/api/v1/nodes").get("items", [])]
    near = facts.near_names(name, names)
    raise CliError(f'node "{name}" not found' + (f"; did you mean: {', '.join(near)}?" if near else ""),
                   EXIT_NOT_FOUND)


def cmd_drain(args, kube: Kube) -> int:
    node = _node(kube, args.node)
    pods = kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={args.node}").get("items", [])
    plan = facts.drain_plan(args.node, pods)
    cordoned = bool((node.get("spec") or {}).get("unschedulable"))
    doc = {"node": args.node, "dryRun": args.dry_run, "alreadyCordoned": cordoned,
           "jobs": plan["jobs"], "otherPods": plan["otherPods"], "actions": []}
    text = sys.stdout if args.output == "table" else sys.stderr

    def say(action: str, **kw) -> None:
        doc["actions"].append({"action": action, **kw})
        if args.dry_run:
            return
        print(_describe(action, kw), file=text, flush=True)

    if args.dry_run:
        lines = [f"would cordon node {args.node}" if not cordoned else f"node {args.node} is already cordoned"]
        for j in plan["jobs"]:
            lines.append(f"would ask job {j['namespace']}/{j['job']} to checkpoint, then delete "
                         f"{', '.join(j['pods'])}")
        if not plan["jobs"]:
            lines.append("no TrainingJob workers on this node")
        if plan["otherPods"]:
            lines.append(f"would leave {len(plan['otherPods'])} other pod(s): {', '.join(plan['otherPods'])}")
        print(dumps(doc, args.output) if args.output != "table" else "\n".join(lines))
        return EXIT_OK

    if not cordoned:
        kube.patch(f"/api/v1/nodes/{args.node}", {"spec": {"unschedulable": True}})
    say("cordon", node=args.node, changed=not cordoned)
    waits = []
    for j in plan["jobs"]:
        try:
            rid, baseline = request_checkpoint(kube, j["namespace"], j["job"])
        except CliError as e:
            say("checkpoint-skipped", job=j["job"], namespace=j["namespace"], reason=str(e))
            continue
        say("checkpoint-requested", job=j["job"], namespace=j["namespace"], requestId=rid)
        waits.append((j, rid, baseline))
    for j, rid, baseline in waits:
        if args.checkpoint_timeout <= 0:
            break
        try:
            job = wait_checkpoint(kube, j["namespace"], j["job"], rid, baseline, args.checkpoint_timeout,
                                  progress=lambda m: print(m, file=sys.stderr, flush=True))
            say("checkpointed", job=j["job"], namespace=j["namespace"],
                step=job["status"]["lastCheckpoint"].get("step"))
        except CliError as e:
            if e.code != EXIT_TIMEOUT:
                raise
            say("checkpoint-timeout", job=j["job"], namespace=j["namespace"],
                reason=f"no new checkpoint within {args.checkpoint_timeout:g}s; draining anyway "
                       f"(the job resumes from its last checkpoint)")
    for j in plan["jobs"]:
        for pod in j["pods"]:
            try:
                kube.delete(f"/api/v1/namespaces/{j['namespace']}/pods/{pod}")
                say("deleted", pod=pod, namespace=j["namespace"], job=j["job"])
            except ApiError as e:
                if e.status != 404:
                    raise
    if args.output != "table":
        print(dumps(doc, args.output))
    elif not plan["jobs"]:
        print(f"no TrainingJob workers on node {args.node}")
    return EXIT_OK


def _describe(action: str, kw: dict) -> str:
    job = f"{kw.get('namespace')}/{kw.get('job')}"
    return {
        "cordon": f"node {kw.get('node')} cordoned" if kw.get("changed") else f"node {kw.get('node')} already cordoned",
        "checkpoint-requested": f"job {job}: checkpoint requested ({kw.get('requestId')})",
        "checkpoint-skipped": f"job {job}: no checkpoint ({kw.get('reason')})",
        "checkpointed": f"job {job}: checkpointed at step {kw.get('step')}",
        "checkpoint-timeout": f"job {job}: {kw.get('reason')}",
        "deleted": f"pod {kw.get('namespace')}/{kw.get('pod')} deleted (job {kw.get('job')})",
    }.get(action, f"{action} {kw}")


def add_parser(sub) -> None:
    p = common.add(sub, "drain", cmd_drain, "cordon a node and move the training workers on it elsewhere",
                   description=__doc__)
    p.add_argument("node")
    p.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    p.add_argument("--checkpoint-timeout", type=float, default=60.0,
                   help="seconds to wait for each job's checkpoint before deleting its workers (0: do not wait)")
