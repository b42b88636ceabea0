"""The training part of `make demo`: the operator, a TrainingJob running the built-in
trainer under torchrun on two process nodes with checkpoints in S3, a worker process
SIGKILLed mid-training, the operator's detection and coordinated restart from the last
complete checkpoint, what the job's status says afterwards, and a comparison of the final
parameters with an undisturbed run of the same training (no operator, plain torchrun)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stoker.devcluster.procs import find_processes, free_port

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "trainingjobs.stoker.dev.yaml"
STEPS = 60
CKPT_EVERY = 10


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    """Poll ``check`` until it returns something truthy (returned); exit the demo on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def _job(c, ns: str, name: str) -> dict:
    _, job = c.api("GET", f"/apis/stoker.dev/v1alpha1/namespaces/{ns}/trainingjobs/{name}", ok=None)
    return job


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return rows


def _trainer_pids(pod: str) -> list[int]:
    """The training processes (torchrun's children) of one worker pod, found by the
    pod name the node agent put in their environment."""
    return find_processes(argv_has=b"stoker.worker.train",
                          argv_lacks=(b"stoker.operator.launch", b"/stoker-launcher/stoker_launch.py"),
                          env_has=(f"STOKER_POD_NAME={pod}".encode(),))


def _reference(work: Path, summary_args: list[str]) -> dict:
    ref = work / "reference"
    ref.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOKER_", "AWS_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                "STOKER_METRICS_PATH": str(ref / "metrics.jsonl")})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "stoker.worker.train", str(REPO / "examples" / "train-tiny.yaml"), *summary_args,
         "--set", f"checkpoint.uri={ref / 'ckpt'}", "--set", f"output.summary_path={ref / 'summary.json'}"],
        cwd=ref, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"demo: the reference run failed:\n{proc.stderr[-3000:]}")
    return json.loads((ref / "summary.json").read_text())


class ProcessNodes:
    """The operator as a local process; the trainer reads the repository through PYTHONPATH
    and writes its metrics and summary into the demo folder (process nodes share the host's)."""

    def __init__(self, c, ns: str, work: Path, say) -> None:
        self.c, self.ns, self.work, self.say = c, ns, work, say
        self.metrics, self.summary_path = work / "metrics.jsonl", work / "summary.json"

    def start_operator(self) -> None:
        self.say("starting the operator (kopf) for the demo namespace")
        c, env = self.c, dict(os.environ)
        env.update({
            "STOKER_OPERATOR_KUBECONFIG": str(c.kubeconfig),
            "STOKER_OPERATOR_NAMESPACES": self.ns,
            "STOKER_OPERATOR_METRICS_PORT": str(free_port()),
            "STOKER_OPERATOR_HEALTH_PORT": "0",
            "STOKER_OPERATOR_RENDEZVOUS_PORT": str(free_port()),
            "STOKER_OPERATOR_RESYNC_SECONDS": "1",
            "STOKER_OPERATOR_HEARTBEAT_ADDRESS": f"127.0.0.1:{free_port()}",
            "STOKER_OPERATOR_HEARTBEAT_INTERVAL_SECONDS": "1",
            "STOKER_OPERATOR_S3_ENDPOINT": c.s3_endpoint,
            "PYTHONPATH": str(REPO),
        })
        with open(self.work / "operator.log", "ab") as out:
            self.op = subprocess.Popen([sys.executable, "-m", "stoker.operator.main"], env=env, cwd=REPO,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop_operator(self) -> None:
        os.killpg(self.op.pid, signal.SIGKILL)
        self.op.wait()

    def pod_spec(self, args: list[str]) -> dict:
        return {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "trainer", "image": "stoker-worker:dev",
            "command": [sys.executable, "-m", "stoker.worker.train", str(REPO / "examples" / "train-tiny.yaml")],
            "args": [*args, "--set", f"output.summary_path={self.summary_path}"],
            "env": [{"name": "STOKER_METRICS_PATH", "value": str(self.metrics)},
                    {"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "PYTHONPATH", "value": str(REPO)}]}]}

    def result(self, name: str) -> dict:
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}


def run(c, ns: str, *, say, platform=None) -> dict:
    import boto3

    from stoker.common import env as E

    work = c.state_dir / "demo" / ns
    work.mkdir(parents=True, exist_ok=True)
    bucket = ns
    s3env = c.s3_env()
    boto3.client("s3", endpoint_url=s3env[E.S3_ENDPOINT], aws_access_key_id=s3env[E.S3_ACCESS_KEY],
                 aws_secret_access_key=s3env[E.S3_SECRET_KEY],
                 region_name=s3env[E.S3_REGION]).create_bucket(Bucket=bucket)
    c.create_s3_secret(ns)
    c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    c.wait_crd_established("trainingjobs.stoker.dev")
    platform = (platform or ProcessNodes)(c, ns, work, say)
    platform.start_operator()
    metrics = platform.metrics
    name = "demo"
    job = {
        "apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 2,
            "template": {"spec": platform.pod_spec(["--steps", str(STEPS), "--set", "parallel.mode=ddp"])},
            "checkpoint": {"uri": f"s3://{bucket}/{name}", "intervalSteps": CKPT_EVERY, "keep": 3,
                           "credentialsSecretRef": {"name": "stoker-s3"}},
            "failurePolicy": {"maxRestarts": 3, "backoffSeconds": 1},
        },
    }
    try:
        say(f"applying TrainingJob {ns}/{name}: 2 workers, {STEPS} steps of the built-in GPT trainer "
            f"(DDP, gloo), checkpoint every {CKPT_EVERY} steps to s3://{bucket}/{name}")
        c.kubectl("apply", "-f", "-", input=json.dumps(job))
        kill_at = CKPT_EVERY * 2 + 5
        wait_for(f"training to pass step {kill_at}",
              lambda: any(r.get("step", 0) >= kill_at for r in _metrics(metrics)), 300, every=0.1)
        ck = _job(c, ns, name).get("status", {}).get("lastCheckpoint") or {}
        if ck:
            say(f"status.lastCheckpoint (from the workers' heartbeats): step {ck.get('step')} "
                f"at {ck.get('uri')}")
        pod = f"{name}-worker-1-0"
        pids = wait_for(f"the training process of {pod}", lambda: _trainer_pids(pod), 60, every=0.1)
        step_at_kill = max(r.get("step", 0) for r in _metrics(metrics))
        say(f"injecting a failure: SIGKILL of the training process of {pod} "
            f"(pids {pids}) at step {step_at_kill}")
        t_kill = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        final = wait_for("the job to finish", lambda: (j := _job(c, ns, name)).get("status", {}).get("phase")
                      in ("Succeeded", "Failed") and j, 600)
        status = final["status"]
        rows = _metrics(metrics)
        result = platform.result(name)
        incidents = status.get("incidents") or []
        out = {
            "ok": status["phase"] == "Succeeded",  # and (below) identical to the undisturbed run
            "phase": status["phase"],
            "failure_injected_at_step": step_at_kill,
            "seconds_from_failure_to_end": round(time.monotonic() - t_kill, 1),
            "restarts": status.get("restarts"),
            "incarnation": status.get("incarnation"),
            "last_checkpoint": status.get("lastCheckpoint"),
            "incidents": incidents,
            "final_step": rows[-1].get("step") if rows else None,
            "final_loss": rows[-1].get("loss") if rows else None,
            "final_checksum": result.get("checksum"),
        }
        out["resumed_from_step"] = result.get("resumed_from")
        say(f"job {status['phase']}: restarts {status.get('restarts')}, "
            f"{len(incidents)} incident(s) recorded, final loss {out['final_loss']}")
        for inc in incidents:
            say("incident: " + ", ".join(f"{k}={inc[k]}" for k in (
                "kind", "inPlace", "detectedCause", "cause", "pod", "node", "rank", "exitCode", "step",
                "detectionLatencySeconds", "timeToRecoverSeconds") if k in inc))
        say("running the same training undisturbed (plain torchrun, no operator) for comparison")
        ref = _reference(work, summary_args=["--steps", str(STEPS), "--set", "parallel.mode=ddp"])
        out["reference_checksum"] = ref.get("checksum")
        out["identical_to_undisturbed_run"] = ref.get("checksum") == out["final_checksum"]
        out["ok"] = out["ok"] and out["identical_to_undisturbed_run"]
        say(f"final parameters identical to the undisturbed run: {out['identical_to_undisturbed_run']} "
            f"(sha256 {str(out['final_checksum'])[:16]}…)")
        ev = c.kubectl("get", "events", "-n", ns, "--field-selector",
                       f"involvedObject.name={name}", "--sort-by=.lastTimestamp", check=False).stdout
        if ev.strip():
            say("events of the job:\n" + "\n".join("    " + ln for ln in ev.splitlines()))
        return out
    finally:
        platform.stop_operator()
