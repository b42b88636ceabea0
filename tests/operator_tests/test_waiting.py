"""Why a job cannot run, decided from pods, refused creates and preflight answers (pure).

The cluster tests in test_says_why.py show the same on the real API server and scheduler;
these pin the decisions: which cause, which words, since when, and when a wait ends the job."""
from __future__ import annotations

import copy
import datetime as dt

from stoker.operator import preflight, refusals, waiting
from stoker.operator.jobspec import job_view
from stoker.operator.pods import RenderConfig, render_pod
from stoker.operator.podview import pod_view, trainer_said
from stoker.operator.reconcile import plan

from .helpers import NOW, job_body

T0 = "2026-01-01T11:50:00Z"


def _pod(body, index=0, **status):
    pod = copy.deepcopy(render_pod(job_view(body), index, 0, RenderConfig()))
    pod["metadata"]["creationTimestamp"] = T0
    pod["status"] = {"phase": "Pending", **status}
    return pod


UNSCHEDULABLE = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "lastTransitionTime": T0,
                                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}
CONFIG_ERROR = {"containerStatuses": [{"name": "trainer", "image": "python:3.11", "state": {"waiting": {
    "reason": "CreateContainerConfigError", "message": 'secret "stoker-s3" not found'}}}]}
IMAGE_ERROR = {"containerStatuses": [{"name": "trainer", "image": "nope:1", "state": {"waiting": {
    "reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}}]}
INIT_CRASH = {"initContainerStatuses": [{"name": "fetch", "image": "busybox", "restartCount": 4, "state": {"waiting": {
    "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 3, "message": "no dataset at /data"}}}]}


def test_each_blocked_pod_names_its_cause_and_what_to_do():
    body = job_body()
    w = waiting.pod_waiting(_pod(body, **UNSCHEDULABLE))
    assert (w.reason, w.since, w.pod) == ("Unschedulable", T0, "demo-worker-0-0")
    assert "3 Insufficient nvidia.com/gpu" in w.message and "lower the template's resource requests" in w.message
    w = waiting.pod_waiting(_pod(body, **CONFIG_ERROR))
    assert w.reason == "CreateContainerConfigError"
    assert 'secret "stoker-s3" not found' in w.message and "create the missing Secret" in w.message
    w = waiting.pod_waiting(_pod(body, **IMAGE_ERROR))
    assert w.reason == "ImagePullBackOff" and "'nope:1' cannot be pulled" in w.message
    w = waiting.pod_waiting(_pod(body, **INIT_CRASH))
    assert w.reason == "InitContainerFailing"
    assert "init container fetch" in w.message and "failed 4 times" in w.message and "no dataset" in w.message
    assert waiting.pod_waiting(_pod(body)) is None                            # just pending: not blocked
    assert waiting.pod_waiting(_pod(body, **{**UNSCHEDULABLE, "phase": "Running"})) is None


def test_the_most_actionable_cause_is_shown_for_the_job():
    body = job_body()
    a = waiting.pod_waiting(_pod(body, 0, **UNSCHEDULABLE))
    b = waiting.pod_waiting(_pod(body, 1, **CONFIG_ERROR))
    assert waiting.job_waiting([a, None, b]).reason == "CreateContainerConfigError"


def _pass(body, pods, now=NOW):
    views = [pod_view(p) for p in pods]
    pl = plan(job_view(body), views, now)
    return pl, {c["type"]: c for c in pl.status["conditions"]}


def test_a_waiting_job_says_why_once_and_keeps_waiting_by_default():
    body = job_body(replicas=1)
    pods = [_pod(body, **UNSCHEDULABLE)]
    pl, conds = _pass(body, pods)
    w = conds["Waiting"]
    assert w["status"] == "True" and w["reason"] == "Unschedulable" and f"waiting since {T0}" in w["message"]
    assert pl.status["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in pl.status["message"]
    assert [(e.type, e.reason) for e in pl.events if e.reason == "Unschedulable"] == [("Warning", "Unschedulable")]
    # Next pass, an hour later: same cause, no new Event, same since, still not failed.
    body["status"] = pl.status
    pl2, conds2 = _pass(body, pods, NOW + dt.timedelta(hours=1))
    assert pl2.status["phase"] == "Created" and conds2["Waiting"] == w
    assert not [e for e in pl2.events if e.reason == "Unschedulable"]
    # The pod gets scheduled: the condition clears and the reason goes back.
    body["status"] = pl2.status
    pl3, conds3 = _pass(body, [_pod(body)])
    assert conds3["Waiting"]["status"] == "False" and pl3.status["reason"] == "JobCreated"


def test_pending_timeout_fails_a_job_that_cannot_start_with_the_reason():
    body = job_body(replicas=1, failurePolicy={"pendingTimeoutSeconds": 300})
    pods = [_pod(body, **UNSCHEDULABLE)]       # unschedulable since 11:50, now is 12:00: 600 s
    pl, conds = _pass(body, pods)
    assert pl.status["phase"] == "Failed" and pl.status["reason"] == "Unschedulable"
    assert "pendingTimeoutSeconds=300" in pl.status["message"] and "Insufficient nvidia.com/gpu" in pl.status["message"]
    assert conds["Failed"]["status"] == "True" and conds["Waiting"]["status"] == "False"
    assert pl.delete == ["demo-worker-0-0"] and pl.create == []
    assert pl.status["incidents"][-1]["kind"] == "JobFailed"
    # Not yet: 11:50 + 900 s is after now -> keeps waiting, asks to be looked at when it runs out.
    body = job_body(replicas=1, failurePolicy={"pendingTimeoutSeconds": 900})
    pl, _ = _pass(body, [_pod(body, **UNSCHEDULABLE)])
    assert pl.status["phase"] == "Created" and abs(pl.requeue_after - 300) < 1


def test_refused_creates_fail_only_when_they_can_never_succeed():
    assert refusals.classify_refusal(422, "Pod is invalid") == ("InvalidPodTemplate", True)
    assert refusals.classify_refusal(400, "bad request") == ("InvalidPodTemplate", True)
    assert refusals.classify_refusal(403, 'pods "x" is forbidden: exceeded quota: q, requested: pods=1') == \
        ("QuotaExceeded", False)
    assert refusals.classify_refusal(403, "admission webhook denied the request") == ("PodCreateRefused", False)
    assert refusals.classify_refusal(500, "etcd timeout") == ("PodCreateRefused", False)
    pl, _ = _pass(job_body(replicas=1), [])
    msg = ('Pod "demo-worker-0-0" is invalid: spec.containers[0].name: Invalid value: "bad_name": '
           "a lowercase RFC 1123 label must consist of")
    st, events, inc = refusals.fold_refusal(pl.status, pod="demo-worker-0-0", code=422, message=msg, now=NOW)
    assert st["phase"] == "Failed" and st["reason"] == "InvalidPodTemplate"
    assert "spec.containers[0].name" in st["message"] and "fix spec.template" in st["message"]
    assert events == [("Warning", "InvalidPodTemplate", st["message"])]
    assert inc["kind"] == "JobFailed" and st["incidents"][-1] == inc and inc["error"] == msg
    st, events, inc = refusals.fold_refusal(pl.status, pod="demo-worker-0-0", code=403,
                                            message="exceeded quota: q", now=NOW)
    conds = {c["type"]: c for c in st["conditions"]}
    assert st["phase"] == "Created" and st["reason"] == "QuotaExceeded" and inc is None
    assert conds["Waiting"]["reason"] == "QuotaExceeded" and "free quota" in conds["Waiting"]["message"]
    assert [e[1] for e in events] == ["QuotaExceeded"]


def test_a_refused_create_stays_the_cause_while_pods_are_missing():
    body = job_body(replicas=1)
    pl, _ = _pass(body, [])
    st, _, _ = refusals.fold_refusal(pl.status, pod="demo-worker-0-0", code=403, message="exceeded quota: q", now=NOW)
    body["status"] = st
    later = NOW + dt.timedelta(seconds=30)
    pl2, conds = _pass(body, [], later)                      # no pod exists to show the cause: it is kept
    assert pl2.create == [0] and conds["Waiting"]["reason"] == "QuotaExceeded" and not pl2.events
    st2, events, _ = refusals.fold_refusal(pl2.status, pod="demo-worker-0-0", code=403, message="exceeded quota: q",
                                           now=later)
    assert st2 == st and events == []                       # nothing to write: no status churn, no Event spam


def test_preflight_lists_every_reference_with_its_field():
    body = job_body(checkpoint={"uri": "s3://b/run", "intervalSteps": 5, "credentialsSecretRef": {"name": "s3"}})
    c = body["spec"]["template"]["spec"]["containers"][0]
    c["env"] = [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lr"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "opt", "key": "k", "optional": True}}}]
    c["envFrom"] = [{"secretRef": {"name": "hf-token"}}]
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "d", "configMap": {"name": "data"}},
                                                   {"name": "p", "projected": {"sources": [{"secret": {"name": "tls"}}]}}]
    refs = preflight.references(job_view(body))
    got = {(r.kind, r.name, r.key, r.field) for r in refs}
    assert ("ConfigMap", "cfg", "lr", "spec.template.spec.containers[0].env[0].valueFrom.configMapKeyRef") in got
    assert ("Secret", "hf-token", None, "spec.template.spec.containers[0].envFrom[0].secretRef") in got
    assert ("ConfigMap", "data", None, "spec.template.spec.volumes[0].configMap.name") in got
    assert ("Secret", "tls", None, "spec.template.spec.volumes[1].projected.sources[0].secret.name") in got
    assert ("Secret", "s3", "AWS_ACCESS_KEY_ID", "spec.checkpoint.credentialsSecretRef.name") in got
    assert not [r for r in refs if r.name == "opt"]          # optional refs cannot block a pod
    everything = {(r.kind, r.name): frozenset({"lr", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}) for r in refs}
    assert preflight.verdict(refs, everything) is None
    w = preflight.verdict(refs, {**everything, ("Secret", "s3"): None})
    assert w.reason == "MissingSecret" and "Secret 's3' does not exist" in w.message
    assert "spec.checkpoint.credentialsSecretRef.name" in w.message and "kubectl create secret generic s3" in w.message
    w = preflight.verdict(refs, {**everything, ("ConfigMap", "cfg"): frozenset({"other"})})
    assert w.reason == "MissingConfigMap" and "has no key 'lr'" in w.message
    unknown = {k: v for k, v in everything.items() if k != ("Secret", "s3")}   # could not be read: not reported
    assert preflight.verdict(refs, unknown) is None
    assert preflight.bucket_verdict("s3://b/run", "NoSuchBucket", "http://s3", "s3").reason == "CheckpointBucketMissing"
    assert preflight.bucket_verdict("s3://b/run", "AccessDenied", "http://s3", "s3").reason == "CheckpointAccessDenied"
    assert preflight.bucket_verdict("s3://b/run", "", "http://s3", "s3") is None


def test_the_trainer_container_falls_back_to_its_logs_unless_the_user_chose():
    body = job_body()
    pod = render_pod(job_view(body), 0, 0, RenderConfig())
    assert pod["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    body["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = "File"
    pod = render_pod(job_view(body), 0, 0, RenderConfig())
    assert pod["spec"]["containers"][0]["terminationMessagePolicy"] == "File"
    body["spec"]["template"]["spec"]["initContainers"] = [{"name": "fetch", "image": "x"},
                                                         {"name": "own", "image": "x", "terminationMessagePolicy": "File"}]
    pod = render_pod(job_view(body), 0, 0, RenderConfig())
    assert [c["terminationMessagePolicy"] for c in pod["spec"]["initContainers"]] == ["FallbackToLogsOnError", "File"]


def test_what_the_trainer_said_without_the_launchers_lines():
    tail = ("Traceback (most recent call last):\n  File \"train.py\", line 3\nValueError: bad config: lr must be > 0\n"
            "E1202 06:06:55.534000 32248 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)"
            " local_rank: 0 (pid: 32525) of binary: /usr/bin/python\n"
            "stoker warm: ready for the next restart of stoker.worker.train in 41 (12.3s importing)\n"
            "stoker launch: worker rank 0 exited with 1; exiting 1\n")
    assert trainer_said(tail).splitlines()[-1] == "ValueError: bad config: lr must be > 0"
    missing = "stoker launch: cannot run 'trainx': No such file or directory (not found on PATH or at that path)"
    assert trainer_said(missing) == missing


def test_a_failed_init_container_is_a_crash_with_its_own_words():
    """restartPolicy Never: a failed init container fails the pod before the trainer runs; it
    counts as the user's crash (not a lost worker) and its message names the container."""
    from stoker.operator import detection

    body = job_body()
    pod = _pod(body, phase="Failed", initContainerStatuses=[{"name": "fetch", "state": {"terminated": {
        "exitCode": 3, "reason": "Error", "message": "no dataset at /data"}}}],
               containerStatuses=[{"name": "trainer", "state": {"waiting": {"reason": "PodInitializing"}}}])
    pod["spec"]["nodeName"] = "n1"
    facts = pod_view(pod)
    f = detection.classify_pod(facts, None, node_known=False)
    assert f.cause == detection.WORKER_CRASHED and f.exit_code == 3
    assert f.error == "init container fetch exited with 3: no dataset at /data"


def test_the_launcher_names_a_program_it_cannot_run(capsys):
    from stoker.operator import launch

    assert launch.missing_program(FileNotFoundError(2, "No such file or directory", "trainx")) == 127
    assert "cannot run 'trainx': No such file or directory" in capsys.readouterr().err
    assert launch.missing_program(PermissionError(13, "Permission denied", "/opt/train.sh")) == 126
    assert "fix spec.template.spec.containers[0].command" in capsys.readouterr().err


def test_a_held_job_fails_after_its_pending_timeout_too():
    """A cause found before any pod exists (preflight, a refused create) is kept while the pods
    are missing, and pendingTimeoutSeconds counts from when it was first seen."""
    body = job_body(replicas=1, failurePolicy={"pendingTimeoutSeconds": 60})
    pl, _ = _pass(body, [])
    held = waiting.Waiting("MissingSecret", "Secret 's3' does not exist in the job's namespace")
    body["status"], events = waiting.fold(pl.status, held, NOW)
    assert [e[1] for e in events] == ["MissingSecret"]
    pl, conds = _pass(body, [], NOW + dt.timedelta(seconds=30))
    assert pl.status["phase"] == "Created" and conds["Waiting"]["reason"] == "MissingSecret" and pl.create == [0]
    pl, conds = _pass(body, [], NOW + dt.timedelta(seconds=61))
    assert pl.status["phase"] == "Failed" and pl.status["reason"] == "MissingSecret" and pl.create == []
    assert "Secret 's3' does not exist" in pl.status["message"] and "pendingTimeoutSeconds=60" in pl.status["message"]
