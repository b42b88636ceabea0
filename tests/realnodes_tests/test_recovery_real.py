"""Recovery on real nodes, with the Helm-installed operator (its own 2-node cluster, the
operator pinned to real-node-0):

- the built-in trainer (checkpoints in MinIO) has its trainer process SIGKILLed inside its
  container at a random step, then the node of one of its workers is stopped (kubelet,
  containerd and containers gone) at a random step of the next incarnation: both are
  detected and recovered, the replacement runs on the other node, and the final parameters
  are bit-identical to an undisturbed run;
- a user's image with Python and torch only (no Stoker: the launcher comes in through the
  chart's init container) runs its own torchrun script, which keeps its own checkpoints on a
  shared volume; its SIGKILLed trainer is restarted the same way and ends bit-identical;
- examples/minimal.yaml runs from the image it names;
- with the failure policy's defaults and the in-memory tier, a SIGKILLed trainer restarts in place in
  its container, every rank from its pod's memory (issue 12's fast path in containers).

Faults come at random steps (seeded; the seed is printed). What the tests time faults by
(the step journal, the script's progress files) lives on host folders mounted into the pods:
an observation channel for the test, not something the system uses."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from stoker.devcluster.realnodes import pyimages
from tests.realnodes_tests import operator_helm as H
from tests.recovery_tests import faults as F
from tests.recovery_tests.conftest import reference_summary
from tests.recovery_tests.e2e import assert_restored_from_memory
from tests.recovery_tests.test_e2e_recovery import assert_resumed_from_newest_commit, fault_rng
from tests.recovery_tests.trainer_configs import trainer_config

pytestmark = [pytest.mark.realnodes, pytest.mark.cluster, pytest.mark.slow, pytest.mark.torch]

NODES = ["real-node-0", "real-node-1"]
BYO_SCRIPT = pathlib.Path(__file__).with_name("scripts") / "byo_train.py"
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(real_cluster, tmp_path_factory):
    """Both images imported into the nodes; the chart installed in a namespace of its own."""
    from tests.realnodes_tests.test_real_nodes import python_image
    from stoker.devcluster.local import cache_dir
    ref = python_image(real_cluster)
    byo_ref, archive = pyimages.torch_image(cache_dir() / "images", log=print)
    real_cluster.real_nodes().import_image(archive)
    ns = f"rec-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", ns)
    H.helm_install(real_cluster, ns, tmp_path_factory.mktemp("helm"),
                   node_selector={"kubernetes.io/hostname": NODES[0]})
    real_cluster.kubectl("rollout", "status", "deployment/stoker", "-n", ns, "--timeout=180s", timeout=200)
    real_cluster.create_s3_secret(ns)
    return {"ns": ns, "ref": ref, "byo": byo_ref}


def shared_dir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)          # the pods run as uid 10001
    return path


def job_status(c, ns: str, name: str) -> dict:
    r = c.kubectl("get", "trainingjob", name, "-n", ns, "-o", "json", check=False)
    return (json.loads(r.stdout).get("status") or {}) if r.returncode == 0 else {}


def describe(c, ns: str, name: str, what: str = "describe") -> str:
    """`stoker describe` / `stoker logs` (which hands over to kubectl: run as a program)."""
    stoker = pathlib.Path(sys.executable).with_name("stoker")
    r = subprocess.run([str(stoker), what, name, "--kubeconfig", str(c.kubeconfig), "-n", ns],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def worker_pods(c, ns: str, name: str) -> list[dict]:
    return json.loads(c.kubectl("get", "pods", "-n", ns, "-l", f"stoker.dev/job-name={name}",
                                "-o", "json").stdout)["items"]


def wait_succeeded(c, ns: str, name: str, timeout: float = 600) -> dict:
    return H.wait_phase(c, ns, name, ("Succeeded",), timeout=timeout)


def built_in_job(c, ns: str, image: str, name: str, tmp_path: pathlib.Path) -> tuple[dict, pathlib.Path, dict]:
    """A 150-step job of the built-in trainer (not applied yet; checkpoints in a bucket of its own), its
    step journal's folder, and the summary of the undisturbed run it must end identical to."""
    cfg = trainer_config(150)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = shared_dir(tmp_path / "journal")
    H.apply_config_map(c, ns, f"{name}-config", {"config.json": json.dumps(H.in_pod_config(cfg))})
    return H.trainer_job(name, image, H.make_bucket(c), jdir), jdir, ref


def test_a_users_image_without_stoker_runs_and_recovers_from_a_killed_trainer(real_cluster, installed, tmp_path):
    c, ns = real_cluster, installed["ns"]
    rng = fault_rng()
    steps = 120
    ref = H.byo_reference(tmp_path / "ref", BYO_SCRIPT, steps)
    ckpt, progress = shared_dir(tmp_path / "ckpt"), shared_dir(tmp_path / "progress")
    H.apply_config_map(c, ns, "byo-script", {"train.py": BYO_SCRIPT.read_text()})
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(
        H.byo_job("byo", installed["byo"], steps, ckpt, progress)))
    want = rng.randint(8, 50)
    H.wait_progress(progress, want, timeout=300, diag=lambda: json.dumps(job_status(c, ns, "byo"), indent=1))
    time.sleep(rng.random() * 0.1)
    pid = F.trainer_pid("byo-worker-1-0", b"/script/train.py")
    print(f"fault: SIGKILL the trainer of byo-worker-1-0 (pid {pid}) at step {want}")
    assert F.signal_pid(pid, signal.SIGKILL)
    wait_succeeded(c, ns, "byo")
    st = job_status(c, ns, "byo")
    [inc] = [i for i in st["incidents"] if i["kind"] != "CheckpointFailed"]
    assert inc["kind"] == "Restart" and inc["detectedCause"] == "WorkerKilled" and inc["exitCode"] == 137, inc
    assert st["incarnation"] == 1 and st["restarts"]["infrastructure"] == 1
    logs = "".join(c.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in worker_pods(c, ns, "byo")
                   if p["metadata"]["labels"]["stoker.dev/incarnation"] == "1")
    assert "resumed from step" in logs, logs
    assert f"final step {steps} checksum {ref}" in logs, logs
    pod = next(p for p in worker_pods(c, ns, "byo") if p["metadata"]["name"] == "byo-worker-0-1")
    assert [i["name"] for i in pod["spec"]["initContainers"]] == ["stoker-launcher"]


def test_a_gpu_job_beyond_capacity_waits_and_stoker_describe_gives_the_schedulers_reason(real_cluster, installed):
    """The fake GPUs are the kubelet's (device plugin): more per pod than a node has stays Pending."""
    from tests.realnodes_tests.conftest import GPUS_PER_NODE
    c, ns = real_cluster, installed["ns"]
    body = {"apiVersion": "stoker.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "greedy"},
            "spec": {"replicas": 1, "template": {"spec": {
                "nodeSelector": {"stoker.dev/real-node": "true"}, "securityContext": H.NON_ROOT,
                "containers": [{"name": "trainer", "image": installed["ref"], "imagePullPolicy": "Never",
                                "command": ["python", "-c", "print(1)"],
                                "resources": {"limits": {"nvidia.com/gpu": GPUS_PER_NODE + 1}}}]}}}}
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    try:
        deadline = time.monotonic() + 120
        while "Insufficient nvidia.com/gpu" not in json.dumps(job_status(c, ns, "greedy").get("conditions")):
            assert time.monotonic() < deadline, job_status(c, ns, "greedy")
            time.sleep(1)
        assert job_status(c, ns, "greedy")["phase"] != "Running"
        text = describe(c, ns, "greedy")
        assert "Unschedulable" in text and "Insufficient nvidia.com/gpu" in text, text
    finally:
        c.kubectl("delete", "trainingjob", "greedy", "-n", ns, "--wait=false", check=False)


def test_the_minimal_example_runs_on_real_nodes_from_the_image_it_names(real_cluster, installed):
    """examples/minimal.yaml as NOTES.txt applies it, its image (stoker-worker:0.1.0) served
    by the nodes as a registry would (the trainers' image, tagged with that name). Added by
    the test: the CUDA libraries this stand-in image leaves out, and real-node placement."""
    c, ns = real_cluster, installed["ns"]
    job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "stoker-worker:0.1.0"
    c.real_nodes().tag_image(installed["ref"], f"docker.io/library/{container['image']}")
    volume, mount = H.cuda_libs(pyimages.SITE)
    pod.update(nodeSelector={"stoker.dev/real-node": "true"}, volumes=[volume])
    container["volumeMounts"] = [mount]
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))
    wait_succeeded(c, ns, "minimal", timeout=300)
    logs = "".join(c.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in worker_pods(c, ns, "minimal"))
    summary = [json.loads(line) for line in logs.splitlines() if line.startswith("{") and '"checksum"' in line]
    assert [(s["step"], s["world_size"]) for s in summary] == [(100, 2)], logs[-3000:]


def test_a_killed_trainer_and_a_stopped_node_are_recovered_bit_identical_on_real_nodes(
        real_cluster, installed, tmp_path):
    c, ns = real_cluster, installed["ns"]
    rng = fault_rng()
    job, jdir, ref = built_in_job(c, ns, installed["ref"], "rec", tmp_path)
    job["spec"]["failurePolicy"]["inPlaceRestarts"] = 0   # each fault a new incarnation (what this test follows)
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))

    def incarnation() -> int:
        return int(job_status(c, ns, "rec").get("incarnation", 0))

    def diag() -> str:
        return json.dumps(job_status(c, ns, "rec"), indent=1) + c.kubectl("get", "pods", "-n", ns, "-o", "wide").stdout

    moment = F.at_random_moment(rng, jdir, incarnation, min_steps=8, max_steps=40, timeout=300)
    pid = F.trainer_pid("rec-worker-1-0")
    print("fault 1: SIGKILL the trainer of rec-worker-1-0 at", moment)
    assert F.signal_pid(pid, signal.SIGKILL), diag()

    moment = F.at_random_moment(rng, jdir, incarnation, min_steps=8, max_steps=40, after_incarnation=0,
                                timeout=300)
    on_lost = [p["metadata"]["name"] for p in worker_pods(c, ns, "rec")
               if p["spec"].get("nodeName") == NODES[1] and p["metadata"]["labels"]["stoker.dev/incarnation"] == "1"]
    assert on_lost, diag()
    print(f"fault 2: stop {NODES[1]} (running {on_lost}) at", moment)
    c.real_nodes().stop_node(c.real_nodes().node(1))
    wait_succeeded(c, ns, "rec")

    logs = "".join(c.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in worker_pods(c, ns, "rec"))
    summary = next(json.loads(line) for line in logs.splitlines() if '"checksum"' in line)
    facts = assert_resumed_from_newest_commit(jdir, summary)
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"], (summary, ref)
    # The survivor's gloo error can come before the node turns NotReady (grace period 10 s, the
    # PeerLost settle 5 s): the incident is then first PeerLost, naming the silent peer's node,
    # and NodeLost once that node is found lost (incidents.confirm_peer_lost).
    deadline = time.monotonic() + 60
    while True:
        st = job_status(c, ns, "rec")
        acting = [i for i in st["incidents"] if i["kind"] != "CheckpointFailed"]
        if acting[-1]["detectedCause"] == "NodeLost" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(acting) == 2 and acting[0]["detectedCause"] == "WorkerKilled" and acting[0]["exitCode"] == 137, acting
    assert acting[1]["detectedCause"] == "NodeLost" and acting[1]["node"] == NODES[1], acting
    assert st["restarts"] == {"userError": 0, "infrastructure": 2, "preemption": 0, "total": 2}
    assert len(facts) == 2 and st["incarnation"] == 2
    final = [p for p in worker_pods(c, ns, "rec") if p["metadata"]["labels"]["stoker.dev/incarnation"] == "2"]
    assert sorted(p["spec"]["nodeName"] for p in final) == [NODES[0], NODES[0]], \
        "the replacement runs on the other node"
    text = describe(c, ns, "rec")
    assert "WorkerKilled" in text and "NodeLost" in text, text
    assert '"checksum"' in describe(c, ns, "rec", "logs"), "stoker logs shows the workers' output"


def operator_pod(c, ns: str) -> dict:
    [pod] = [p for p in json.loads(c.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator",
                                             "-o", "json").stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    return pod


def operator_pid(ns: str) -> int | None:
    """The chart's operator process in its container (the host sees it): the one watching ``ns``."""
    want = f"STOKER_OPERATOR_NAMESPACES={ns}".encode()
    return next((pid for pid, _, env in F.processes(b"stoker.operator.main", launcher=False) if want in env), None)


def ready(pod: dict) -> bool:
    return any(cond["type"] == "Ready" and cond["status"] == "True" for cond in pod["status"].get("conditions", []))


def test_the_operator_killed_then_upgraded_while_a_job_trains_restarts_no_job(real_cluster, installed, tmp_path):
    """Issue 12: the rendezvous stores run apart from the operator (the chart's default), so
    the operator's process SIGKILLed at a random step (the kubelet restarts its container) and
    then a `helm upgrade` that changes only the operator (a new pod) leave the job training:
    one incarnation, no restart, no step computed twice, final parameters bit-identical."""
    c, ns = real_cluster, installed["ns"]
    rng = fault_rng()
    steps = 2500            # ~0.08 s a step here: outlasts the kill, the restart and the upgrade
    cfg = trainer_config(steps)
    ref = reference_summary(tmp_path, cfg, 2)
    jdir = shared_dir(tmp_path / "journal")
    bucket = H.make_bucket(c)
    H.apply_config_map(c, ns, "calm-config", {"config.json": json.dumps(H.in_pod_config(cfg))})
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(H.trainer_job("calm", installed["ref"], bucket, jdir)))
    store = json.loads(c.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=rendezvous",
                                 "-o", "json").stdout)["items"]
    incarnation = lambda: int(job_status(c, ns, "calm").get("incarnation", 0))  # noqa: E731
    diag = lambda: json.dumps(job_status(c, ns, "calm"), indent=1)  # noqa: E731

    moment = F.at_random_moment(rng, jdir, incarnation, min_steps=20, max_steps=300, timeout=300)
    before = operator_pod(c, ns)
    print("fault 1: SIGKILL the operator at", moment)
    assert F.signal_pid(operator_pid(ns), signal.SIGKILL), diag()
    deadline = time.monotonic() + 120
    while not (ready(pod := operator_pod(c, ns)) and pod["status"]["containerStatuses"][0]["restartCount"] >= 1):
        assert time.monotonic() < deadline, "the operator's container was not restarted"
        time.sleep(1)
    moment = F.at_random_moment(rng, jdir, incarnation, min_steps=10, max_steps=300, after_t=time.time(),
                                timeout=300)
    print("fault 2: helm upgrade (operator.logLevel) at", moment)
    r = subprocess.run([c.tool("helm"), "upgrade", "stoker", str(H.CHART), "-n", ns, "--reuse-values", "--wait",
                        "--set", "operator.logLevel=DEBUG", "--kubeconfig", str(c.kubeconfig)],
                       capture_output=True, text=True, timeout=330)
    assert r.returncode == 0, r.stderr
    after = operator_pod(c, ns)
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    upgraded_at = max(F.computed_steps(jdir), default=0)
    print(f"upgraded: the operator's pod replaced by step {upgraded_at} of {steps}")
    assert job_status(c, ns, "calm").get("phase") == "Running" and upgraded_at < steps - 50, \
        "the job ended before the upgrade was over: it proves nothing; give it more steps"
    wait_succeeded(c, ns, "calm", timeout=900)

    st = job_status(c, ns, "calm")
    assert st.get("incarnation", 0) == 0 and (st.get("restarts") or {}).get("total", 0) == 0, st
    assert not [i for i in st.get("incidents") or [] if i["kind"] in ("Restart", "Replace")], st["incidents"]
    assert F.computed_steps(jdir) == list(range(1, steps + 1)), "a step was computed twice or never"
    logs = "".join(c.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in worker_pods(c, ns, "calm"))
    summary = next(json.loads(line) for line in logs.splitlines() if '"checksum"' in line)
    assert summary["step"] == steps and summary["checksum"] == ref["checksum"], (summary, ref)
    now = json.loads(c.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=rendezvous",
                               "-o", "json").stdout)["items"]
    assert [p["metadata"]["uid"] for p in now] == [p["metadata"]["uid"] for p in store], "the store was restarted"


def test_a_killed_trainer_restarts_in_place_from_the_in_memory_tier_on_real_nodes(real_cluster, installed, tmp_path):
    """Issue 12's fast path in containers, with the failure policy's defaults (in-place restarts on):
    a trainer SIGKILLed inside its container at a random step is started again inside the same pod,
    every rank with it, from the newest step all ranks hold in their pods' memory
    (``memoryIntervalSteps: 1``, S3 every 5 steps): the same pods, incarnation 0, at most the
    interrupted step computed again, final parameters bit-identical."""
    c, ns = real_cluster, installed["ns"]
    rng = fault_rng()
    job, jdir, ref = built_in_job(c, ns, installed["ref"], "mem", tmp_path)
    job["spec"]["checkpoint"]["memoryIntervalSteps"] = 1
    assert "inPlaceRestarts" not in job["spec"]["failurePolicy"]   # the default: in place
    c.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))
    incarnation = lambda: int(job_status(c, ns, "mem").get("incarnation", 0))  # noqa: E731
    diag = lambda: json.dumps(job_status(c, ns, "mem"), indent=1) + c.kubectl("get", "pods", "-n", ns).stdout  # noqa

    moment = F.at_random_moment(rng, jdir, incarnation, min_steps=8, max_steps=40, timeout=300)
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(c, ns, "mem")}
    assert sorted(uids) == ["mem-worker-0-0", "mem-worker-1-0"], uids
    t0 = time.time()
    print("fault: SIGKILL the trainer of mem-worker-1-0 at", moment)
    assert F.signal_pid(F.trainer_pid("mem-worker-1-0"), signal.SIGKILL), diag()
    wait_succeeded(c, ns, "mem")

    logs = "".join(c.kubectl("logs", "-n", ns, p["metadata"]["name"]).stdout for p in worker_pods(c, ns, "mem"))
    summary = next(json.loads(line) for line in logs.splitlines() if '"checksum"' in line)
    assert summary["step"] == 150 and summary["checksum"] == ref["checksum"], (summary, ref)
    assert_restored_from_memory(jdir, t0)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in worker_pods(c, ns, "mem")} == uids, diag()
    st = job_status(c, ns, "mem")
    assert st["incarnation"] == 0 and st["restarts"]["total"] == 1, diag()
    [inc] = [i for i in st["incidents"] if i["kind"] == "Restart"]
    assert inc["inPlace"] is True and inc["detectedCause"] == "WorkerKilled" and inc["exitCode"] == 137, inc
    assert inc["pod"] == "mem-worker-1-0", inc
    print("in-place incident on real nodes:", json.dumps(inc))
