"""On-call requests: the annotations `stoker restart` and `stoker checkpoint` set
(stoker.dev/restart-request, stoker.dev/checkpoint-request), acted on once each. Pure."""
from __future__ import annotations

from stoker.common import labels as L

from .pass_state import Pass, Plan
from .policy_failure import manual_restart


def take_restart_request(ps: Pass) -> str | None:
    """A restart request not acted on yet: marked handled (status.requests, the annotation) and returned."""
    requests = dict(ps.st.get("requests") or ps.old.get("requests") or {})
    rr = ps.job.annotations.get(L.RESTART_REQUEST)
    if not rr or rr in (requests.get("restart"), ps.job.annotations.get(L.RESTART_REQUEST_HANDLED)):
        return None
    requests["restart"] = rr
    ps.st["requests"] = requests
    ps.p.annotate[L.RESTART_REQUEST_HANDLED] = rr
    return rr


def requests(ps: Pass) -> Plan | None:
    job, p = ps.job, ps.p
    rr = take_restart_request(ps)
    if rr and ps.decision is None:   # a failure restart already restarts everything
        ps.decision = manual_restart(rr, ps.incarnation, ps.now)
    requests = dict(ps.st.get("requests") or ps.old.get("requests") or {})
    cr = job.annotations.get(L.CHECKPOINT_REQUEST)
    if cr and cr not in (requests.get("checkpoint"), job.annotations.get(L.CHECKPOINT_REQUEST_HANDLED)):
        requests["checkpoint"] = cr
        ps.st["requests"] = requests
        p.checkpoint_request = cr
        p.annotate[L.CHECKPOINT_REQUEST_HANDLED] = cr
        ps.event("Normal", "CheckpointRequested", f"asking every worker to checkpoint now (request {cr})")
    return None
