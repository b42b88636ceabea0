"""Phase, restart and status rules (the kubelet's, see podstatus)."""
import pytest

from stoker.devcluster.nodeagent.podstatus import (ContainerState, backoff_seconds, exit_code_of, lost_container,
                                       pod_phase, pod_status, should_restart)


def running(name="c"):
    c = ContainerState(name)
    c.mark_running(100)
    return c


def exited(code, name="c"):
    c = running(name)
    c.mark_terminated(code)
    return c


def restarting(code, name="c"):
    c = exited(code, name)
    c.mark_waiting_restart()
    return c


@pytest.mark.parametrize("policy,code,want", [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False),
    ("OnFailure", 3, True), ("Never", 3, False), ("Never", 0, False)])
def test_should_restart(policy, code, want):
    assert should_restart(policy, code) is want


def test_init_containers_restart_only_on_failure_and_never_with_never():
    assert should_restart("Always", 0, init=True) is False
    assert should_restart("Always", 1, init=True) is True
    assert should_restart("Never", 1, init=True) is False


def test_exit_codes_of_signals_are_128_plus_n():
    assert exit_code_of(-15) == 143 and exit_code_of(-9) == 137 and exit_code_of(3) == 3


def test_backoff_doubles_and_is_capped():
    assert [backoff_seconds(i, 1, 10) for i in range(6)] == [1, 2, 4, 8, 10, 10]


@pytest.mark.parametrize("policy,mains,want", [
    ("Never", [ContainerState("c")], "Pending"),
    ("Never", [running()], "Running"),
    ("Never", [exited(0)], "Succeeded"),
    ("Never", [exited(3)], "Failed"),
    ("OnFailure", [exited(0)], "Succeeded"),
    ("OnFailure", [restarting(3)], "Running"),
    ("Always", [restarting(0)], "Running"),
    ("Never", [exited(0, "a"), running("b")], "Running"),
    ("Never", [exited(0, "a"), exited(1, "b")], "Failed"),
])
def test_phase(policy, mains, want):
    assert pod_phase(policy, [], mains) == want


def test_phase_waits_for_init_and_fails_on_unrestartable_init_failure():
    init = ContainerState("init", init=True)
    assert pod_phase("Never", [init], [ContainerState("c")]) == "Pending"
    init.mark_running(5)
    init.mark_terminated(2)
    assert pod_phase("Never", [init], [ContainerState("c")]) == "Failed"
    ok = exited(0, "init")
    assert pod_phase("Never", [ok], [running()]) == "Running"


def test_status_reports_exit_code_reason_and_restarts():
    c = exited(3)
    c.mark_waiting_restart()
    c.mark_running(101)
    c.mark_terminated(3)
    st = pod_status(policy="Never", inits=[], mains=[c], ready={"c": False}, pod_ip="127.1.0.2",
                    host_ip="127.1.0.1", start_time="2026-01-01T00:00:00Z")
    cs = st["containerStatuses"][0]
    assert st["phase"] == "Failed" and st["podIP"] == "127.1.0.2" and st["hostIP"] == "127.1.0.1"
    assert cs["state"]["terminated"]["exitCode"] == 3 and cs["state"]["terminated"]["reason"] == "Error"
    assert cs["restartCount"] == 1 and cs["lastState"]["terminated"]["exitCode"] == 3
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "PodCompleted"


def test_ready_condition_and_stable_transition_times():
    st = pod_status(policy="Always", inits=[], mains=[running()], ready={"c": True}, pod_ip="i",
                    host_ip="h", start_time="t")
    again = pod_status(policy="Always", inits=[], mains=[running()], ready={"c": True}, pod_ip="i",
                       host_ip="h", start_time="t", previous=st)
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    assert again["conditions"] == st["conditions"]


def test_lost_container_continues_from_the_api_status():
    assert lost_container(None, "c") is None
    assert lost_container([{"name": "c", "state": {"waiting": {}}, "restartCount": 0}], "c") is None
    assert lost_container([{"name": "c", "state": {"running": {"startedAt": "t0"}}, "restartCount": 2}], "c") == (2, None, "t0")
    term = {"exitCode": 0, "reason": "Completed"}
    assert lost_container([{"name": "c", "state": {"terminated": term}, "restartCount": 0}], "c") == (0, term, None)


def test_gpu_plan_gives_each_container_its_own_devices():
    from stoker.devcluster.nodeagent import gpus

    spec = {"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
                           {"name": "b"},
                           {"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
            "initContainers": [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    need, positions = gpus.plan(spec)
    assert need == 3 and positions == {"a": [0, 1], "b": [], "c": [2], "i": [0]}
    pool = gpus.GpuPool(4)
    ids = pool.take(need)
    other = pool.take(2)
    assert ids == [0, 1, 2] and other == [3]  # never more than exist
    assert gpus.visible_devices(ids, positions["c"]) == "2" and gpus.visible_devices(ids, []) == ""
    pool.give_back(ids)
    assert pool.take(4) == [0, 1, 2]
