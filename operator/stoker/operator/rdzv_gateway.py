"""The operator's end of the locked rendezvous (``stoker.common.rdzv_lock``): listens on
--rendezvous-port, checks each connection's preamble against the job's token (the same
Secret and lookup as the heartbeat stream) and splices it to that job's own store. Torch-free:
the stores live in the store process (``rendezvous.StoreProcess(per_job=True)``).

``python -m stoker.operator.rdzv_gateway`` is the same gateway as the separate store of a
chart install (its ``<release>-rendezvous`` Deployment, the default): it reads no
Secrets (no API access at all) and checks tokens derived from the install key
(``auth.derive_token``); a job's store closes after it has had no connection for a while.

One thread per direction of each connection (a torchrun agent holds one or two): enough
for hundreds of pods; thousands would want an event loop here."""
from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time

from stoker.common.auth import AUTH_HEADER, BEARER, JOB_HEADER, AuthError, TokenLookup, authenticate, derived_lookup
from stoker.common.rdzv_lock import HANDSHAKE_TIMEOUT_S, accept_forever, parse_preamble, read_line, splice

from .rendezvous import StoreProcess

log = logging.getLogger("stoker.operator.rendezvous")

# A job's store in the separate store closes after this long without a connection: a live
# torchrun agent keeps one open, so only a job that is gone, or waits whole between
# incarnations, loses it (its next rendezvous starts on a fresh store, as after a restart).
IDLE_CLOSE_S = 900.0


def listen(port: int, bind_host: str | None) -> socket.socket:
    """``bind_host`` None: every address of both families where the host has IPv6 (IPv6
    ClusterIPs), else every IPv4 address."""
    if bind_host is None and socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=256)
    return socket.create_server((bind_host or "0.0.0.0", port), backlog=256)


class Gateway:
    def __init__(self, port: int, lookup: TokenLookup, stores: StoreProcess, bind_host: str | None = None) -> None:
        self.lookup = lookup
        self.stores = stores
        self.refused = 0
        self._listener = listen(port, bind_host)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}        # job -> connections spliced now
        self._idle: dict[str, float] = {}      # job -> when its last connection closed

    def start(self) -> "Gateway":
        accept_forever(self._listener, self._serve, "rdzv-gateway")
        log.info("rendezvous gateway listening (locked: per-job stores, job tokens)", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._listener.close()

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: its store goes too (best effort; the store process may be down)."""
        self._close(f"{namespace}/{name}")

    def reap(self, idle_s: float, now: float | None = None) -> list[str]:
        """Close the stores of jobs with no connection for ``idle_s``; returns their keys."""
        now = time.monotonic() if now is None else now
        with self._lock:
            gone = [job for job, t in self._idle.items() if not self._open.get(job) and now - t >= idle_s]
            for job in gone:
                self._idle.pop(job)
                self._close(job)
        return gone

    def _close(self, job: str) -> None:
        try:
            self.stores.request(f"CLOSE {job}")
        except ConnectionError:
            pass

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            job, token = parse_preamble(read_line(conn))
            authenticate({AUTH_HEADER: BEARER + token, JOB_HEADER: str(job)}, self.lookup)
        except ConnectionError:   # hung up before a whole preamble: a TCP probe (the chart's), a scan
            conn.close()
            return
        except (AuthError, OSError) as e:
            self.refused += 1
            log.warning("rendezvous connection refused", extra={"peer": peer[0], "error": str(e)})
            self._answer(conn, f"ERR {e}")
            return
        key = str(job)
        with self._lock:  # counted before the store is looked up: reap never closes a store being joined
            self._open[key] = self._open.get(key, 0) + 1
        try:
            self._splice(conn, key)
        finally:
            with self._lock:
                self._open[key] -= 1
                self._idle[key] = time.monotonic()

    def _splice(self, conn: socket.socket, job: str) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.stores.open(job)), timeout=HANDSHAKE_TIMEOUT_S)
        except (ConnectionError, OSError) as e:
            log.warning("rendezvous store unavailable", extra={"job": job, "error": str(e)})
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


def main(argv: list[str] | None = None) -> int:
    """The separate store of a chart install: gateway + per-job stores, until SIGTERM."""
    from .config import env_for, load

    ap = argparse.ArgumentParser(description="Stoker's separate rendezvous store (chart installs): the locked "
                                             "gateway and one c10d store per job")
    ap.add_argument("--port", type=int, default=29400)
    ap.add_argument("--idle-close-seconds", type=float, default=IDLE_CLOSE_S)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    key = load().rendezvous_key or ""
    try:
        lookup = derived_lookup(key)
    except ValueError as e:
        print(f"stoker rendezvous store: {e}: set {env_for('rendezvous_key')} (the chart's rendezvous-key "
              "Secret, the same one the operator reads)", file=sys.stderr)
        return 2
    stores = StoreProcess(0, per_job=True)
    stores.start()
    stores.watch()
    gateway = Gateway(args.port, lookup, stores).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(min(60.0, args.idle_close_seconds / 4)):
        for job in gateway.reap(args.idle_close_seconds):
            log.info("closed an idle job's rendezvous store", extra={"job": job})
    gateway.stop()
    stores.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
