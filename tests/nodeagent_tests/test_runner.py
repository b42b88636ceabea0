"""PodRunner with real processes and a fake API (records what would be sent)."""
from __future__ import annotations

import time

import pytest

from stoker.devcluster.nodeagent import gpus
from stoker.devcluster.nodeagent.pods import Context, PodRunner


class FakeKube:
    def __init__(self, objects=None):
        self.objects = objects or {}
        self.patches: list[dict] = []
        self.deletes: list[tuple[str, dict]] = []

    def get_or_none(self, path):
        return self.objects.get(path)

    def patch(self, path, body, kind="strategic"):
        self.patches.append(body)

    def delete(self, path, body=None):
        self.deletes.append((path, body))


def make_runner(tmp_path, containers, *, init=(), policy="Never", kube=None, gpu_count=0):
    kube = kube or FakeKube()
    ctx = Context(kube=kube, node="n", host_ip="127.200.0.1", state_dir=str(tmp_path),
                  hosts_path=str(tmp_path / "hosts.json"), shim_dir=str(tmp_path), hosts_file=str(tmp_path / "h"),
                  preload_lib=None, allocatable={}, backoff_base=0.1, backoff_cap=1.0,
                  save_state=lambda: None, gpu_pool=gpus.GpuPool(gpu_count))
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
           "spec": {"restartPolicy": policy, "containers": list(containers), "initContainers": list(init)}}
    return PodRunner(ctx, pod, "127.200.0.2"), kube


def sh(name, script, **extra):
    return {"name": name, "image": "x", "command": ["sh", "-c", script], **extra}


def run_until(runner, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate(runner):
        assert time.monotonic() < deadline, runner.status()
        runner.step(time.monotonic())
        runner.publish()
        time.sleep(0.02)


def test_init_containers_run_first_in_order(tmp_path):
    order = tmp_path / "order"
    r, kube = make_runner(tmp_path, [sh("main", f"echo main >> {order}")],
                          init=[sh("i1", f"echo i1 >> {order}"), sh("i2", f"echo i2 >> {order}")])
    run_until(r, lambda r: r.phase() == "Succeeded")
    assert order.read_text().split() == ["i1", "i2", "main"]
    st = kube.patches[-1]["status"]
    assert [c["state"]["terminated"]["reason"] for c in st["initContainerStatuses"]] == ["Completed"] * 2
    assert kube.patches[-1]["metadata"] == {"uid": "u1"}  # never writes to a same-name successor


def test_failed_init_container_fails_the_pod_with_never(tmp_path):
    r, _ = make_runner(tmp_path, [sh("main", "true")], init=[sh("i1", "exit 4")])
    run_until(r, lambda r: r.phase() == "Failed")
    assert r.mains[0].state == "waiting"  # never started


def test_sigkill_after_the_grace_period_and_delete_with_grace_zero(tmp_path):
    r, kube = make_runner(tmp_path, [sh("main", "trap '' TERM; echo up; while true; do sleep 0.05; done")])
    run_until(r, lambda r: (tmp_path / "pods" / "ns_p" / "main.log").exists()
              and "up" in (tmp_path / "pods" / "ns_p" / "main.log").read_text())
    r.begin_delete(time.monotonic(), 0.5, "test")
    run_until(r, lambda r: r.finished)
    assert r.mains[0].exit_code == 137
    assert r.finish_delete()
    assert kube.deletes == [("/api/v1/namespaces/ns/pods/p", {"gracePeriodSeconds": 0, "preconditions": {"uid": "u1"}})]


def test_missing_command_binary_is_a_start_error(tmp_path):
    r, kube = make_runner(tmp_path, [{"name": "main", "command": ["/nonexistent/bin"]}])
    run_until(r, lambda r: r.phase() == "Failed")
    term = kube.patches[-1]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (128, "StartError")


def test_missing_secret_waits_with_create_container_config_error(tmp_path):
    c = sh("main", "true", env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    r, kube = make_runner(tmp_path, [c])
    run_until(r, lambda r: kube.patches)
    waiting = kube.patches[-1]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError" and 'secret "s" not found' in waiting["message"]
    kube.objects["/api/v1/namespaces/ns/secrets/s"] = {"data": {"k": "dg=="}}
    run_until(r, lambda r: r.phase() == "Succeeded", timeout=15)


def test_always_restarts_with_backoff_and_counts(tmp_path):
    r, _ = make_runner(tmp_path, [sh("main", "exit 1")], policy="Always")
    run_until(r, lambda r: r.mains[0].restart_count >= 2)
    st = r.status()
    assert st["phase"] == "Running"
    assert st["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    r.begin_delete(time.monotonic(), 0, "cleanup")
    run_until(r, lambda r: r.finished)


@pytest.mark.parametrize("policy,code,phase", [("OnFailure", 0, "Succeeded"), ("Never", 2, "Failed")])
def test_terminal_phases(tmp_path, policy, code, phase):
    r, _ = make_runner(tmp_path, [sh("main", f"exit {code}")], policy=policy)
    run_until(r, lambda r: r.phase() == phase)
