"""A trainer that failed because a collective with another rank broke: the text torch's
process-group backends leave when a peer process dies or the network between ranks fails.
Such a failure says nothing about its own rank; the root cause is elsewhere (a peer's
crash, kill, lost node). Found by bench/chaos.py: a lost node's surviving peer exited 1
with a gloo read error before the node turned NotReady, and the restart was charged to
the user's budget."""
from __future__ import annotations

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
    for p in PATTERNS:
        if text and p in text:
            return p
    return None
