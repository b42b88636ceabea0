"""`make demo` on real nodes (the default): the images built here and imported into the
nodes' containerd, the operator installed by `helm install charts/stoker` and running as the
chart's Deployment, the trainer in that image with examples/train-tiny.yaml from a ConfigMap,
as uid 10001. The demo watches the steps in the trainer's metrics file, which it reads
through a host folder mounted into the pods (a demo convenience: on a cluster you would use
Prometheus or `stoker logs`), and takes the final checksum from `kubectl logs`."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.demo_training import REPO
from tests.realnodes_tests import operator_helm as H

CONFIG = "/etc/train/train-tiny.yaml"
BUSYBOX_POD = "echo hello from pod $POD_NAME at $POD_IP on node $NODE"


def busybox_pod(c) -> dict:
    """The hello Pod's spec changes for real nodes: a busybox image the nodes hold."""
    from stoker.devcluster.realnodes import images
    spec = images.busybox_image()
    c.real_nodes().import_image(images.build(spec, c.real_nodes().image_cache()))
    return {"image": spec.ref(), "imagePullPolicy": "Never", "command": ["/bin/busybox", "sh", "-c", BUSYBOX_POD],
            "args": []}


class RealNodes:
    def __init__(self, c, ns: str, work: Path, say) -> None:
        self.c, self.ns, self.work, self.say = c, ns, work, say
        shared = work / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        os.chmod(shared, 0o777)                       # the trainer runs as uid 10001
        self.shared, self.metrics = shared, shared / "metrics.jsonl"

    def start_operator(self) -> None:
        from stoker.devcluster.local import cache_dir
        from stoker.devcluster.realnodes import pyimages
        c, say = self.c, self.say
        say("building the Python image (Debian python3 + torch + stoker; cached by content) "
            "and importing it into both nodes")
        self.ref, archive = pyimages.stoker_image(cache_dir() / "images", log=lambda m: say(m.strip()))
        c.real_nodes().import_image(archive)
        self.cuda = H.cuda_libs(pyimages.SITE)
        say(f"helm install stoker charts/stoker -n {self.ns} (the operator's own image: no torch)")
        op = H.helm_install(c, self.ns, self.work, log=lambda m: say(m.strip()),
                            operator={"heartbeatIntervalSeconds": 1})
        say(f"operator image {op}; trainer image {self.ref}")
        c.kubectl("rollout", "status", "deployment/stoker", "-n", self.ns, "--timeout=180s", timeout=200)
        pod = json.loads(c.kubectl("get", "pods", "-n", self.ns, "-l", "app.kubernetes.io/component=operator",
                                   "-o", "json").stdout)["items"]
        say("the operator runs as the chart's Deployment: " +
            ", ".join(f"pod {p['metadata']['name']} on {p['spec'].get('nodeName')}" for p in pod))
        H.apply_config_map(c, self.ns, "demo-config", {
            "train-tiny.yaml": (REPO / "examples" / "train-tiny.yaml").read_text()})

    def stop_operator(self) -> None:
        """Nothing to stop: the operator goes with the cluster."""

    def pod_spec(self, args: list[str]) -> dict:
        shared = H.host_volume("shared", self.shared)
        return {
            "nodeSelector": {"stoker.dev/real-node": "true"}, "affinity": H.SPREAD,
            "securityContext": H.NON_ROOT, "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "config", "configMap": {"name": "demo-config"}}, shared[0], self.cuda[0]],
            "containers": [{
                "name": "trainer", "image": self.ref, "imagePullPolicy": "Never",
                "command": ["python", "-m", "stoker.worker.train", CONFIG],
                "args": [*args, "--set", "output.summary_path=/tmp/out/summary.json"],
                "env": [{"name": "STOKER_METRICS_PATH", "value": str(self.metrics)},
                        {"name": "OMP_NUM_THREADS", "value": "1"}],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/train"}, shared[1], self.cuda[1]]}]}

    def result(self, name: str) -> dict:
        """Rank 0's summary line, from `kubectl logs` of the job's pods."""
        pods = json.loads(self.c.kubectl("get", "pods", "-n", self.ns, "-l", f"stoker.dev/job-name={name}",
                                         "-o", "json").stdout)["items"]
        for p in pods:
            logs = self.c.kubectl("logs", "-n", self.ns, p["metadata"]["name"], check=False).stdout
            for line in logs.splitlines():
                if line.startswith("{") and '"checksum"' in line:
                    self.say(f"kubectl logs {p['metadata']['name']} (on {p['spec'].get('nodeName')}): {line}")
                    return json.loads(line)
        return {}
