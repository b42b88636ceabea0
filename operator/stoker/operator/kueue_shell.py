"""The I/O of a queued job's Kueue Workload: read it before a pass, carry out the pass's
``Plan.workload`` after the pods were deleted (policy_kueue.py decides, kueue_workload.py
builds). A Workload API that is missing or forbidden becomes the job's reason, not a traceback."""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from . import kueue_workload as W
from .jobspec import JobView
from .kube import Conflict, KubeApi, KubeError
from .pass_state import Plan

log = logging.getLogger("stoker.operator")
UNAVAILABLE = "KueueUnavailable"


class KueueShell:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    def observe(self, job: JobView) -> dict[str, Any] | None:
        """The job's Workload (None: none yet, or no queueName)."""
        if W.queue_name(job) is None:
            return None
        try:
            return self.kube.get_workload(job.namespace, W.workload_name(job))
        except KubeError as e:
            if e.status != 403:
                raise
            return None   # the create below says why

    def act(self, job: JobView, wl: dict[str, Any] | None, pl: Plan, now: dt.datetime) -> None:
        action = pl.workload
        if not action:
            return
        fields = {"job": job.name, "namespace": job.namespace, "workload": W.workload_name(job), "action": action[0]}
        try:
            if action[0] == "create":
                if self.kube.create_workload(job.namespace, W.workload(job, self._priority(job))):
                    log.info("created Kueue Workload", extra=fields)
            elif wl is None:
                return
            elif action[0] == "resize":
                patch = W.resize(wl, job)
                if patch is not None:
                    self.kube.patch_workload(job.namespace, W.workload_name(job), patch)
                    log.info("resized Kueue Workload", extra={**fields, "replicas": job.replicas})
            elif action[0] == "release":
                self.kube.patch_workload(job.namespace, W.workload_name(job), W.release_patch(wl, now), status=True)
                log.info("released the quota of an evicted Kueue Workload", extra=fields)
            elif action[0] == "finish":
                self.kube.patch_workload(job.namespace, W.workload_name(job),
                                         W.finish_patch(wl, action[1], action[2], now), status=True)
                log.info("marked Kueue Workload Finished", extra=fields)
            elif action[0] == "delete":
                self.kube.delete_workload(job.namespace, W.workload_name(job))
                log.info("deleted the Kueue Workload of a suspended job", extra=fields)
        except Conflict:
            log.debug("Kueue Workload changed meanwhile; the next pass retries", extra=fields)
            pl.requeue(1.0)
        except KubeError as e:
            if e.status not in (403, 404):
                raise
            msg = (f"cannot {action[0]} the Kueue Workload {W.workload_name(job)}: {e.message} (is Kueue installed, and "
                   "may the operator manage workloads.kueue.x-k8s.io? chart: kueue.enabled=true)")
            log.warning("Kueue Workload unavailable", extra={**fields, "error": e.message[:300]})
            if pl.status.get("phase") == "Queued":
                pl.status["reason"], pl.status["message"] = UNAVAILABLE, msg
            pl.requeue(30.0)

    def _priority(self, job: JobView) -> tuple[str, str, int] | None:
        ref = W.priority_class(job)
        if ref is None:
            return None
        value = self.kube.priority_value(*ref)
        return None if value is None else (ref[0], ref[1], value)
