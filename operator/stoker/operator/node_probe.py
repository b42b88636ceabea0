"""Is a node's kubelet reachable from here? The witness of the heartbeat node rule
(heartbeat_checks.quiet_nodes): when every rank on a node has gone quiet at once, the shell
dials the node's kubelet port (``NodeView.address`` / ``kubelet_port``: a TCP connect, nothing
sent) and that of a node still heard from (the control). A crashed or frozen process leaves its
kubelet answering; a lost or partitioned node does not. Without a control that answers now or
answered before (a network policy between the operator and the kubelets, nodes without an
address), it concludes nothing and node loss waits for the control plane's NotReady as before.
Each node is dialed once when it first runs a rank (``learn``), so a kubelet that answered then
and not now counts even with no other node to compare (every rank of the job on the lost node).

    probe = NodeProbe()
    probe.lost([suspect_view], controls=[healthy_view])   # -> frozenset of lost node names
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterable

from .detection import NodeView

TIMEOUT_S = 1.0   # a connect not answered within this is a node not answering
TTL_S = 1.0       # a node's answer is reused this long (passes come several a second)


def dial(address: str, port: int, timeout_s: float = TIMEOUT_S) -> bool:
    """True if a TCP connection to address:port opens within ``timeout_s``."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def verdict(suspects: dict[str, bool], controls: dict[str, bool], reached_before: bool) -> frozenset[str]:
    """The suspects that did not answer, if this operator can reach kubelets at all (a control answered
    now, or some node did before); else none. Pure."""
    if not (any(controls.values()) or reached_before):
        return frozenset()
    return frozenset(name for name, ok in suspects.items() if not ok)


class NodeProbe:
    def __init__(self, connect: Callable[[str, int], bool] = dial,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connect = connect
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, bool]] = {}  # node -> (when, answered)
        self.reached_any = False

    def answers(self, node: NodeView) -> bool | None:
        """Whether the node's kubelet answers (cached ``TTL_S``); None without an address."""
        if not node.address or not node.kubelet_port:
            return None
        with self._lock:
            at, ok = self._seen.get(node.name, (-1e9, False))
        if self.clock() - at < TTL_S:
            return ok
        ok = self.connect(node.address, node.kubelet_port)
        with self._lock:
            self._seen[node.name] = (self.clock(), ok)
            self.reached_any = self.reached_any or ok
        return ok

    def learn(self, node: NodeView) -> None:
        """Dial a node once, the first time it runs a rank: whether kubelets answer from here is then
        known before any node goes quiet (a job whose every rank ran on the node it lost has no
        other node to compare with)."""
        with self._lock:
            known = node.name in self._seen
        if not known:
            self.answers(node)

    def lost(self, suspects: Iterable[NodeView], controls: Iterable[NodeView] = ()) -> frozenset[str]:
        """The suspects whose kubelet does not answer while a control's does, or while some kubelet
        (a suspect's own, before) answered this operator (``verdict``)."""
        asked = {n.name: self.answers(n) for n in suspects}
        sus = {name: ok for name, ok in asked.items() if ok is not None}
        if not sus or all(sus.values()):
            return frozenset()
        ctl = {n.name: self.answers(n) for n in list(controls)[:2]}
        return verdict(sus, {k: v for k, v in ctl.items() if v is not None}, self.reached_any)
