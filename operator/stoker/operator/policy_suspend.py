"""spec.runPolicy.suspend: a suspended job keeps no pods; resuming starts a new incarnation. Pure.

The workers checkpoint and stop before their pods go (``drain``), so the resumed
incarnation continues exactly where they stopped.
"""
from __future__ import annotations

from .detection import TRAINING_PAUSED
from .on_call import take_restart_request
from .pass_state import Pass, Plan


def suspend(ps: Pass) -> Plan | None:
    b, st = ps.b, ps.st
    if ps.job.suspend:
        ps.p.delete = [x.name for x in b.previous + b.active + b.succeeded + b.failed + b.excess if not x.deleting]
        if ps.phase != "Suspended" or ps.old.get("reason") == TRAINING_PAUSED:  # a paused job now resumes by spec
            ps.set_phase("Suspended", "JobSuspended", "runPolicy.suspend is true")
            ps.condition("Suspended", True, "JobSuspended", "runPolicy.suspend is true: worker pods deleted")
            ps.condition("Running", False, "JobSuspended", "the job is suspended")
            st.pop("startTime", None)
            ps.event("Normal", "Suspended", "runPolicy.suspend is true: deleting worker pods")
        return ps.done()
    if ps.phase == "Suspended":
        why = "runPolicy.suspend is false"
        if ps.old.get("reason") == TRAINING_PAUSED:  # spec.health paused it: a person resumes it
            request = take_restart_request(ps)
            if request is None:
                ps.p.delete = [x.name for x in b.previous + b.active + b.excess if not x.deleting]
                return ps.done()
            why = f"restart requested after the training paused (request {request})"
        # Resume as a new incarnation; the next pass creates its pods.
        st["incarnation"] = ps.incarnation + 1
        ps.set_phase("Restarting", "JobResumed", why)
        ps.condition("Suspended", False, "JobResumed", why)
        st.pop("lastRestartTime", None)
        ps.event("Normal", "Resumed", f"resuming as incarnation {ps.incarnation + 1}")
        ps.p.requeue(0)
        return ps.done()
    return None
