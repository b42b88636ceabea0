"""On-call requests: the annotations `stoker restart` and `stoker checkpoint` set
(stoker.dev/restart-request, stoker.dev/checkpoint-request), acted on once each. Pure."""
from __future__ import annotations

from stoker.common import labels as L

from .pass_state import Pass, Plan
from .policy_failure import manual_restart


def requests(ps: Pass) -> Plan | None:
    job, p = ps.job, ps.p
    requests = dict(ps.old.get("requests") or {})
    rr = job.annotations.get(L.RESTART_REQUEST)
    if rr and rr not in (requests.get("restart"), job.annotations.get(L.RESTART_REQUEST_HANDLED)):
        requests["restart"] = rr
        ps.st["requests"] = requests
        p.annotate[L.RESTART_REQUEST_HANDLED] = rr
        if ps.decision is None:   # a failure restart already restarts everything
            ps.decision = manual_restart(rr, ps.incarnation, ps.now)
    cr = job.annotations.get(L.CHECKPOINT_REQUEST)
    if cr and cr not in (requests.get("checkpoint"), job.annotations.get(L.CHECKPOINT_REQUEST_HANDLED)):
        requests["checkpoint"] = cr
        ps.st["requests"] = requests
        p.checkpoint_request = cr
        p.annotate[L.CHECKPOINT_REQUEST_HANDLED] = cr
        ps.event("Normal", "CheckpointRequested", f"asking every worker to checkpoint now (request {cr})")
    return None
