"""spec.failurePolicy.pendingTimeoutSeconds, and waiting that is never silent: the Waiting
condition, reason and Event for workers that cannot start (``waiting.py`` names why);
once the timeout runs out the job fails with that reason. Pure."""
from __future__ import annotations

from . import incidents as I
from . import waiting
from .pass_state import Event, Pass, Plan


def pending(ps: Pass) -> Plan | None:
    st = ps.st
    phase = str(st.get("phase") or "")
    v = waiting.assess(ps.conds, waiting.job_waiting(x.waiting for x in ps.b.active), phase=phase,
                       status_reason=st.get("reason"), now=ps.now, keep_refusal=bool(ps.p.create),
                       timeout_s=ps.job.pending_timeout_seconds if phase != "Running" else None)
    ps.p.events += [Event(*e) for e in v.events]
    ps.p.requeue(v.requeue)
    if v.reason:
        st["reason"], st["message"] = v.reason
    ps.conds = v.conditions
    if not v.fail:
        return None
    ps.p.create = []
    ps.finish("Failed", *v.fail)
    ps.record(I.note("JobFailed", ps.incarnation, ps.now, v.fail[1]), detected=False)
    ps.delete(ps.cleanup())
    return ps.done()
