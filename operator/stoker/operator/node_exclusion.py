"""Keeping new pods off a node found lost before the control plane says so. Pure.

The heartbeat node rule (heartbeat_checks.quiet_nodes + node_probe.py) finds a lost node within a
second or two; the node lifecycle controller marks it NotReady and taints it NoSchedule only after
its grace period (40 s by default). In between the node is Ready to the scheduler, and a pod
created for the recovery (an elastic replacement, a new incarnation) lands on it whenever the
preferred avoidance term (recovery.with_node_anti_affinity) finds no other fit: on a kubelet that
will never start it, to be replaced again once the node turns NotReady (found in CI: a second
Replace incident 13 s after the first).

So while the shell holds a node as lost and the API still calls it Ready, the pods it creates carry
a *required* ``matchFields metadata.name NotIn`` for it, and name it in the annotation
``EXCLUDED``. A required term must not outlive its reason (issue 11: a job left unschedulable by
such terms), so a pod still waiting to be scheduled whose excluded node is Ready again and no
longer held lost (a partition that healed) is deleted, and the next pass creates it without the
term (``stale``). Once the node is NotReady its own taint keeps pods off; the term is then moot.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .detection import NodeView
from .podview import EXCLUDED_NODES as EXCLUDED
from .podview import PodView

if TYPE_CHECKING:
    from .pass_state import Pass


def exclude(pod: Mapping[str, Any], nodes: Iterable[str]) -> dict[str, Any]:
    """A copy of the pod manifest the scheduler may not place on ``nodes``: each of the spec's
    required node selector terms (ORed) gets the NotIn fields (ANDed), or one term is added."""
    out = copy.deepcopy(dict(pod))
    names = sorted(set(nodes))
    if not names:
        return out
    fields = [{"key": "metadata.name", "operator": "NotIn", "values": [n]} for n in names]
    na = out.setdefault("spec", {}).setdefault("affinity", {}).setdefault("nodeAffinity", {})
    req = na.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = req.get("nodeSelectorTerms") or [{}]
    req["nodeSelectorTerms"] = [{**t, "matchFields": [*(t.get("matchFields") or []), *fields]} for t in terms]
    out.setdefault("metadata", {}).setdefault("annotations", {})[EXCLUDED] = ",".join(names)
    return out


def stale(pods: Sequence[PodView], nodes: Mapping[str, NodeView], held_lost: frozenset[str]) -> list[str]:
    """Unscheduled pods kept off a node that is Ready again and no longer held lost: to recreate."""
    def healed(n: str) -> bool:
        v = nodes.get(n)
        return v is not None and not v.lost and n not in held_lost
    return [p.name for p in pods if p.phase == "Pending" and not p.node and not p.deleting
            and any(healed(n) for n in p.excluded_nodes)]


def recreate_healed(ps: "Pass") -> None:
    """The reconcile step: delete the pods ``stale`` names (the next pass creates them afresh)."""
    names = stale(ps.b.active, ps.obs.nodes, ps.obs.held_lost) if ps.obs.nodes_listed else []
    if names:
        ps.delete(names)
        ps.event("Normal", "NodeExclusionLifted", f"recreating {', '.join(names)}: the node(s) they were kept off "
                 f"are Ready and answer again")
