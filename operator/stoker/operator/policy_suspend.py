"""spec.runPolicy.suspend: a suspended job keeps no pods; resuming starts a new incarnation. Pure.

The workers checkpoint and stop before their pods go (``drain``), so the resumed
incarnation continues exactly where they stopped.
"""
from __future__ import annotations

from .pass_state import Pass, Plan


def suspend(ps: Pass) -> Plan | None:
    b, st = ps.b, ps.st
    if ps.job.suspend:
        ps.p.delete = [x.name for x in b.previous + b.active + b.succeeded + b.failed + b.excess if not x.deleting]
        if ps.phase != "Suspended":
            ps.set_phase("Suspended", "JobSuspended", "runPolicy.suspend is true")
            ps.condition("Suspended", True, "JobSuspended", "runPolicy.suspend is true: worker pods deleted")
            ps.condition("Running", False, "JobSuspended", "the job is suspended")
            st.pop("startTime", None)
            ps.event("Normal", "Suspended", "runPolicy.suspend is true: deleting worker pods")
        return ps.done()
    if ps.phase == "Suspended":
        # Resume as a new incarnation; the next pass creates its pods.
        st["incarnation"] = ps.incarnation + 1
        ps.set_phase("Restarting", "JobResumed", "runPolicy.suspend is false")
        ps.condition("Suspended", False, "JobResumed", "runPolicy.suspend is false")
        st.pop("lastRestartTime", None)
        ps.event("Normal", "Resumed", f"resuming as incarnation {ps.incarnation + 1}")
        ps.p.requeue(0)
        return ps.done()
    return None
