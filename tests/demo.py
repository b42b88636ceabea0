"""`make demo`: the whole Stoker story on this machine, printed as it happens.

1. a local control plane + S3 server (built and started by devcluster/stoker/devcluster),
   with two real nodes (kubelet, containerd, CNI, kube-proxy, CoreDNS, each in a network
   namespace of its own; needs root and `make node-packages`), or with ``--process-nodes``
   two process nodes that run pods as local processes (the fast option: no images, no
   containers, the operator as a local process);
2. a plain Pod on a node (shows the cluster really runs things);
3. the operator (on real nodes: `helm install charts/stoker` with the image built here),
   an example TrainingJob running the built-in trainer under torchrun with checkpoints to
   S3, a failure injected (a trainer process SIGKILLed) and the recovery, then a summary.

State lives in ``$STOKER_DEMO_DIR`` (default ``~/.stoker/demo``); the cluster is stopped
at the end unless ``--keep`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import yaml

from tests import demo_real, demo_training
from stoker.devcluster.local import LocalCluster
from tests.demo_training import wait_for

REPO = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


POD = """
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: NS}
spec:
  restartPolicy: Never
  containers:
  - name: hello
    image: ignored-by-process-nodes
    command: [python, -c]
    args: ["import os; print(f'hello from pod {os.environ[\\"POD_NAME\\"]} at {os.environ[\\"POD_IP\\"]} on node {os.environ[\\"NODE\\"]}')"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
"""


def pod_phase(c: LocalCluster, ns: str, name: str) -> dict:
    _, pod = c.api("GET", f"/api/v1/namespaces/{ns}/pods/{name}", ok=None)
    return pod


def run_pod(c: LocalCluster, ns: str, real: bool) -> dict:
    say("applying a Pod that prints its own name and IP (read from the downward API)")
    pod = yaml.safe_load(POD.replace("NS", ns))
    if real:
        pod["spec"]["containers"][0].update(demo_real.busybox_pod(c))
    c.kubectl("apply", "-f", "-", input=json.dumps(pod))
    pod = wait_for("the pod to finish",
                   lambda: (p := pod_phase(c, ns, "hello")).get("status", {}).get("phase")
                   in ("Succeeded", "Failed") and p, 120)
    node = pod["spec"]["nodeName"]
    if real:
        out = c.kubectl("logs", "-n", ns, "hello").stdout.strip()
    else:
        log = c.state_dir / "nodes" / node / "pods" / f"{ns}_hello" / "hello.log"
        out = log.read_text().strip() if log.exists() else "(no log file)"
    say(f"pod ran on {'real' if real else 'process'} node {node}, phase {pod['status']['phase']}, "
        f"pod IP {pod['status'].get('podIP')}")
    say(f"its output: {out}")
    return {"phase": pod["status"]["phase"], "node": node, "podIP": pod["status"].get("podIP"),
            "output": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("STOKER_DEMO_DIR",
                                                    str(Path.home() / ".stoker" / "demo")))
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--summary-json", help="also write the summary to this file")
    ap.add_argument("--process-nodes", action="store_true",
                    help="the fast option: process nodes and the operator as a local process")
    args = ap.parse_args(argv)
    real = not args.process_nodes

    summary: dict = {}
    t0 = time.monotonic()
    c = LocalCluster(args.dir)
    say(f"bringing up the local control plane in {args.dir} (first run builds the Go tools)")
    c.up(**({"real_nodes": 2} if real else {"process_nodes": 2}), gpus=2)
    say("cluster ready:\n" + textwrap.indent(c.info(), "    "))
    try:
        ns = f"demo-{int(time.time())}"
        c.kubectl("create", "namespace", ns)
        summary["nodes"] = "real" if real else "process"
        summary["pod"] = run_pod(c, ns, real)
        summary["training"] = demo_training.run(c, ns, say=say,
                                                platform=demo_real.RealNodes if real else None)
        summary["seconds"] = round(time.monotonic() - t0, 1)
        say("summary:\n" + textwrap.indent(json.dumps(summary, indent=2), "    "))
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
        ok = summary["pod"]["phase"] == "Succeeded" and summary["training"]["ok"]
        return 0 if ok else 1
    finally:
        if args.keep:
            say(f"cluster left running: export KUBECONFIG={c.kubeconfig}; "
                f"stop it with `stoker cluster down --dir {args.dir}`")
        else:
            c.down()
            say("cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
