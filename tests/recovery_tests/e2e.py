"""The end-to-end recovery tests' shared setup and probes: one TrainingJob of the built-in
trainer on process nodes with the heartbeat operator, S3 checkpoints and diagnostics
(``start_trainer_job``), and what the tests read back (status, metrics, summary, pids)."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable

from stoker.devcluster.procs import find_processes
from tests.operator_tests.conftest import create_job, diagnostics, get_job, wait_for, worker_pods  # noqa: F401 (diagnostics re-exported)
from tests.recovery_tests.trainer_configs import write_config


def trainer_job(name: str, config: pathlib.Path, bucket: str, *, replicas: int = 2, node_selector: dict,
                failure_policy: dict | None = None, journal_dir: pathlib.Path | None = None) -> dict:
    """The job; with ``journal_dir`` its workers keep the append-only step journal there
    (stoker.worker.journal: what "no step computed twice" is asserted from)."""
    container = {"name": "trainer", "image": "local/python",
                 "command": [sys.executable, "-m", "stoker.worker.train", str(config)],
                 "env": [{"name": "OMP_NUM_THREADS", "value": "1"}]}
    if journal_dir is not None:
        container["env"].append({"name": "STOKER_STEP_JOURNAL_DIR", "value": str(journal_dir)})
    return {
        "apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [container], "terminationGracePeriodSeconds": 5,
                                  "nodeSelector": node_selector}},
            "checkpoint": {"uri": f"s3://{bucket}/{name}", "intervalSteps": 5, "keep": 3,
                           "credentialsSecretRef": {"name": "stoker-s3"}},
            "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 0, **(failure_policy or {})},
        },
    }


def status(kube, namespace, name) -> dict:
    return get_job(kube, namespace, name).get("status") or {}


def pod_node(kube, namespace, pod_name) -> str | None:
    for p in worker_pods(kube, namespace, pod_name.rsplit("-worker-", 1)[0]):
        if p["metadata"]["name"] == pod_name:
            return p.get("spec", {}).get("nodeName")
    return None


def last_step(metrics_path: pathlib.Path) -> int:
    try:
        lines = metrics_path.read_text().splitlines()
    except OSError:
        return -1
    steps = [json.loads(line).get("step", -1) for line in lines if line.strip().startswith("{")]
    return max(steps, default=-1)


def trainer_pid(pod_name: str) -> int | None:
    """The trainer process (not the launcher) of a pod running on a process node."""
    found = find_processes(argv_has=b"stoker.worker.train", argv_lacks=(b"stoker.operator.launch",),
                           env_has=(f"STOKER_POD_NAME={pod_name}".encode(),))
    return found[0] if found else None


def metrics_rows(out: pathlib.Path) -> list[dict]:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "step" in r and "loss" in r:
            rows.append(r)
    return rows


def summary_of(out: pathlib.Path) -> dict | None:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class Run:
    """A started trainer job: its name, operator, output folder (config, metrics, summary)."""

    kube: Any
    namespace: str
    name: str
    op: Any
    out: pathlib.Path

    def status(self) -> dict:
        return status(self.kube, self.namespace, self.name)

    @property
    def diag(self) -> Callable[[], str]:
        return diagnostics(self.kube, self.namespace, self.name, self.op)

    def wait_step(self, step: int, timeout: float = 300) -> None:
        """Until the metrics file shows training at ``step`` or beyond."""
        wait_for(f"training past step {step}", lambda: last_step(self.out / "metrics.jsonl") >= step,
                 timeout=timeout, interval=0.05, on_timeout=self.diag)

    def wait_phase(self, phase: str, timeout: float = 300) -> None:
        wait_for(f"job {phase}", lambda: self.status().get("phase") == phase, timeout=timeout, on_timeout=self.diag)


def start_trainer_job(*, cluster, kube, namespace: str, bucket: str, operator, tmp_path: pathlib.Path, name: str,
                      cfg: dict, node_selector: dict, replicas: int = 2, failure_policy: dict | None = None,
                      journal_dir: pathlib.Path | None = None, edit: Callable[[dict], None] | None = None) -> Run:
    """The operator (heartbeat service on), the S3 Secret, the trainer's config under
    ``tmp_path/job`` and the TrainingJob (``edit(body)`` changes it before it is created)."""
    op = operator()
    cluster.create_s3_secret(namespace)
    out = tmp_path / "job"
    path = write_config(out / "config.json", cfg, out)
    body = trainer_job(name, path, bucket, replicas=replicas, node_selector=node_selector,
                       failure_policy=failure_policy, journal_dir=journal_dir)
    if edit is not None:
        edit(body)
    create_job(kube, namespace, body)
    return Run(kube, namespace, name, op, out)


def acting_incidents(st: dict, resumed: int | None) -> list[dict]:
    """The incidents that acted on the job (Restart, Replace, JobFailed). A fault at a
    random moment may hit a save in flight: that save does not commit and is recorded as
    a CheckpointFailed incident, which must name a step the job never resumed from
    (newer than ``resumed``, the S3 checkpoint it resumed from; None: it restarted from
    scratch). After a restore from the in-memory tier no S3 checkpoint was read: pass the
    newest commit before the fault (``assert_restored_from_memory`` returns it), since the
    failed save may be older than the step restored from memory (the save of step 25 still
    in flight when a node was lost at step 26, memory restored 26)."""
    failed = [i for i in st.get("incidents") or [] if i["kind"] == "CheckpointFailed"]
    assert all(i["step"] > (resumed if resumed is not None else -1) for i in failed), (resumed, failed)
    return [i for i in st.get("incidents") or [] if i["kind"] != "CheckpointFailed"]


def assert_restored_from_memory(jdir: pathlib.Path, t0: float,
                                ranks: int = 2) -> tuple[int, list[dict], int | None]:
    """Every rank of the round after ``t0`` (a fault) restored the same step from the in-memory tier, not
    from S3, not older than the newest commit, and at most the step the fault interrupted is computed
    again (the tier's interval: 1). Returns (that step, the restore records, the newest S3 commit before
    the fault or None)."""
    from stoker.worker import journal

    records = journal.read(jdir)
    old = {journal.writer(r) for r in records if r["t"] < t0}   # pids alone repeat across containers
    computed = {r["step"] for r in records if journal.writer(r) in old and r["event"] == "step"}
    commits = {r["step"] for r in records if r["event"] == "committed" and r["t"] < t0}
    restored = [r for r in records if r["event"] == "resumed_from_memory"]
    assert sorted(r["rank"] for r in restored) == list(range(ranks)) and len({r["step"] for r in restored}) == 1, \
        restored
    assert not [r for r in records if r["event"] == "resumed" and journal.writer(r) not in old], "restored from S3"
    at = restored[0]["step"]
    recomputed = sorted(s for s in computed if s > at)
    print(f"fault after step {max(computed)}, newest commit {max(commits, default=None)}, "
          f"resumed from memory at {at}, recomputed {recomputed}")
    assert at >= max(commits, default=0) and len(recomputed) <= 1, (at, commits, recomputed)
    return at, restored, max(commits, default=None)
