"""The operator's end of the locked rendezvous (``stoker.common.rdzv_lock``): listens on
--rendezvous-port, checks each connection's preamble against the job's token (the same
Secret and lookup as the heartbeat stream) and splices it to that job's own store. Torch-free:
the stores live in the store process (``rendezvous.StoreProcess(per_job=True)``).

One thread per direction of each connection (a torchrun agent holds one or two): enough
for hundreds of pods; thousands would want an event loop here."""
from __future__ import annotations

import logging
import socket

from stoker.common.auth import AUTH_HEADER, BEARER, JOB_HEADER, AuthError, TokenLookup, authenticate
from stoker.common.rdzv_lock import HANDSHAKE_TIMEOUT_S, accept_forever, parse_preamble, read_line, splice

from .rendezvous import StoreProcess

log = logging.getLogger("stoker.operator.rendezvous")


class Gateway:
    def __init__(self, port: int, lookup: TokenLookup, stores: StoreProcess, bind_host: str = "0.0.0.0") -> None:
        self.lookup = lookup
        self.stores = stores
        self.refused = 0
        self._listener = socket.create_server((bind_host, port), reuse_port=False, backlog=256)
        self.port = self._listener.getsockname()[1]

    def start(self) -> "Gateway":
        accept_forever(self._listener, self._serve, "rdzv-gateway")
        log.info("rendezvous gateway listening (locked: per-job stores, job tokens)", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._listener.close()

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: its store goes too (best effort; the store process may be down)."""
        try:
            self.stores.request(f"CLOSE {namespace}/{name}")
        except ConnectionError:
            pass

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            job, token = parse_preamble(read_line(conn))
            authenticate({AUTH_HEADER: BEARER + token, JOB_HEADER: str(job)}, self.lookup)
        except (AuthError, OSError) as e:
            self.refused += 1
            log.warning("rendezvous connection refused", extra={"peer": peer[0], "error": str(e)})
            self._answer(conn, f"ERR {e}")
            return
        try:
            up = socket.create_connection(("127.0.0.1", self.stores.open(str(job))), timeout=HANDSHAKE_TIMEOUT_S)
        except (ConnectionError, OSError) as e:
            log.warning("rendezvous store unavailable", extra={"job": str(job), "error": str(e)})
            self._answer(conn, f"ERR the rendezvous store is unavailable: {e}")
            return
        try:
            conn.sendall(b"OK\n")
        except OSError:
            up.close()
            conn.close()
            return
        conn.settimeout(None)
        up.settimeout(None)
        splice(conn, up)

    @staticmethod
    def _answer(conn: socket.socket, line: str) -> None:
        try:
            conn.sendall(line.encode(errors="replace")[:1000] + b"\n")
        except OSError:
            pass
        conn.close()
