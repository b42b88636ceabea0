"""A trainer that failed because a collective with another rank broke: the text torch's
process-group backends leave when a peer process dies or the network between ranks fails.
Such a failure says nothing about its own rank; the root cause is elsewhere (a peer's
crash, kill, lost node). Found by bench/chaos.py: a lost node's surviving peer exited 1
with a gloo read error before the node turned NotReady, and the restart was charged to
the user's budget."""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .detection import Finding, RankProgress
    from .podview import PodView

# A PeerLost failure waits this long (from its pod's end) for the peer's own failure to show:
# PeerLost is only judged when no other pod shows a cause (detection.detect).
PEER_SETTLE_S = 5.0

PATTERNS = (
    "gloo/transport/tcp",                                # gloo pair errors: read/write error, closed by peer, timeout
    "Connection reset by peer",
    "Connection closed by peer",
    "remote process exited or there was a network error",   # NCCL (ncclRemoteError)
    "ncclRemoteError",
    "NCCL communicator was aborted",
    "DistNetworkError",
)


def peer_transport_error(text: str | None) -> str | None:
    """The first pattern found in a failed trainer's last lines, or None."""
    if not text:
        return None
    return next((p for p in PATTERNS if p in text), None)


def with_suspect(f: "Finding", pods: Sequence["PodView"], ranks: Sequence["RankProgress"],
                 now_wall: dt.datetime) -> "Finding":
    """A PeerLost finding names, as its node, the node of the peer heard from longest ago
    (a lost node's rank falls silent first; replacements prefer to avoid it), and waits
    ``PEER_SETTLE_S`` from its onset for that peer's own failure to show."""
    heard = {r.pod_name: r.last_seen for r in ranks if r.pod_name}
    peers = sorted((p for p in pods if p.name != f.pod and p.phase != "Succeeded" and p.node),
                   key=lambda p: (heard.get(p.name, float("-inf")), p.index))
    settle = PEER_SETTLE_S - (now_wall - f.onset).total_seconds() if f.onset else 0.0
    if not peers:
        return dataclasses.replace(f, settle_s=max(0.0, settle))
    p = peers[0]
    return dataclasses.replace(f, node=p.node, settle_s=max(0.0, settle),
                               message=f"{f.message}; suspect: {p.name} on node {p.node}")
