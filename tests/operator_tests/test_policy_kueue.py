"""spec.scheduling.queueName, decided without a cluster: a queued job creates no worker until its
one Kueue Workload is admitted and says why meanwhile; an eviction stops every worker before the
quota is released and the next incarnation is prepared; the Workload follows the job's end."""
from __future__ import annotations

from stoker.operator import kueue_workload as W
from stoker.operator.jobspec import job_view
from stoker.operator.reconcile import plan

from .helpers import NOW, job_body, observed


def workload(*conds: tuple[str, str, str], count: int = 2, message: str = "") -> dict:
    st = {"conditions": [{"type": t, "status": s, "reason": r, "message": message} for t, s, r in conds]}
    if any(t == "QuotaReserved" and s == "True" for t, s, _ in conds):
        st["admission"] = {"clusterQueue": "cq", "podSetAssignments": [{"name": "workers", "count": count}]}
    return {"metadata": {"name": "wl", "resourceVersion": "7", "generation": 1}, "spec": {}, "status": st}


ADMITTED = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"))
PENDING = workload(("QuotaReserved", "False", "Pending"), message="insufficient unused quota for nvidia.com/gpu")
EVICTED = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"),
                   ("Evicted", "True", "Preempted"), message="Preempted to accommodate a workload")


def queued_body(**status):
    return job_body(scheduling={"queueName": "team"}, status=status)


def test_a_new_queued_job_creates_its_workload_and_no_pod():
    p = plan(job_view(queued_body()), [], NOW)
    assert p.workload == ("create",) and p.create == []
    assert p.status["phase"] == "Queued" and p.status["reason"] == W.QUEUED


def test_a_pending_job_waits_whole_and_says_what_kueue_said():
    p = plan(job_view(queued_body(phase="Queued")), [], NOW, workload=PENDING)
    assert p.create == [] and "insufficient unused quota" in p.status["message"]
    assert next(c for c in p.status["conditions"] if c["type"] == "Queued")["status"] == "True"


def test_admission_creates_every_worker():
    body = queued_body(phase="Queued", reason=W.QUEUED)
    p = plan(job_view(body), [], NOW, workload=ADMITTED)
    assert p.status["reason"] == W.ADMITTED and p.create == []          # this pass leaves Queued ...
    p = plan(job_view({**body, "status": p.status}), [], NOW, workload=ADMITTED)
    assert p.create == [0, 1]                                            # ... the next creates all workers


def test_an_eviction_deletes_the_workers_and_releases_only_once_they_are_gone():
    body = queued_body(phase="Running", incarnation=0)
    pods = [observed(body, 0), observed(body, 1)]
    p = plan(job_view(body), pods, NOW, workload=EVICTED)
    assert sorted(p.delete) == [pods[0].name, pods[1].name] and p.workload is None
    assert p.status["phase"] == "Queued" and p.status["reason"] == W.EVICTED
    p = plan(job_view({**body, "status": p.status}), [], NOW, workload=EVICTED)
    assert p.workload == ("release",) and p.status["incarnation"] == 1
    assert p.status["restarts"]["preemption"] == 1 and p.status["restarts"]["userError"] == 0


def test_a_finished_job_marks_its_workload_finished():
    p = plan(job_view(queued_body(phase="Succeeded", message="done")), [], NOW, workload=ADMITTED)
    assert p.workload == ("finish", "Succeeded", "done")


def test_a_job_without_a_queue_never_touches_kueue():
    p = plan(job_view(job_body()), [], NOW)
    assert p.workload is None and p.create == [0, 1]


def test_the_release_patch_is_what_kueue_jobframework_writes():
    patch = W.release_patch(EVICTED, NOW)
    conds = {c["type"]: c for c in patch["status"]["conditions"]}
    assert patch["status"]["admission"] is None and patch["metadata"]["resourceVersion"] == "7"
    assert conds["QuotaReserved"]["status"] == "False" and conds["QuotaReserved"]["reason"] == "Pending"
    assert conds["Admitted"]["status"] == "False" and conds["Requeued"]["status"] == "True"


def test_the_workload_holds_all_workers_and_the_job_priority():
    job = job_view(job_body(replicas=3, scheduling={"queueName": "team", "priorityClassName": "high"}))
    wl = W.workload(job, ("scheduling.k8s.io", "PriorityClass", 1000))
    assert wl["spec"]["podSets"][0]["count"] == 3 and wl["spec"]["queueName"] == "team"
    assert wl["spec"]["priority"] == 1000 and wl["spec"]["priorityClassRef"]["name"] == "high"
    assert wl["metadata"]["ownerReferences"][0]["uid"] == job.uid
