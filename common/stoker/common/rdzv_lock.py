"""The locked rendezvous: one job's agents reach that job's store, and nothing else does.

torchrun's c10d rendezvous speaks the TCPStore protocol, which has no authentication, and
the operator used to host one store for every job in the cluster: any pod that could reach
it could read, write or delete another team's rendezvous keys (issue 17). Now:

    torchrun agent ──> 127.0.0.1:<local>  the launcher's forwarder (``Forwarder``)
                          │  "STOKER-RDZV/1 <namespace>/<job> <token>\\n"   (``preamble``)
                          ▼
                       the operator's gateway (--rendezvous-port; stoker.operator.rdzv_gateway)
                          │  the token checked against the job's Secret, as for heartbeats
                          ▼
                       that job's own TCPStore (loopback only, in the store process)

The gateway answers ``OK`` or ``ERR <why>`` on one line, then only copies bytes. A
connection without a valid preamble never reaches a store. Torch-free: both ends are
sockets and threads."""
from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Mapping

from . import env as E
from .auth import AuthError, JobKey

MAGIC = "STOKER-RDZV/1"
MAX_LINE = 1024
HANDSHAKE_TIMEOUT_S = 10.0
UPSTREAM_RETRY_S = 30.0
ENDPOINT_FLAG = "--rdzv-endpoint"


def preamble(namespace: str, job: str, token: str) -> bytes:
    return f"{MAGIC} {namespace}/{job} {token}\n".encode()


def parse_preamble(line: bytes) -> tuple[JobKey, str]:
    """(job, token) from a preamble line, or AuthError saying what is wrong."""
    try:
        magic, job, token = line.decode("ascii").strip().split(" ")
    except (UnicodeDecodeError, ValueError):
        raise AuthError(f"not a Stoker rendezvous preamble (expected '{MAGIC} <namespace>/<job> <token>')") from None
    if magic != MAGIC:
        raise AuthError(f"unknown rendezvous protocol {magic[:32]!r} (expected {MAGIC})")
    return JobKey.parse(job), token


def read_line(sock: socket.socket, limit: int = MAX_LINE) -> bytes:
    """One ``\\n``-ended line, read a byte at a time so nothing after it is consumed."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            raise ConnectionError("closed before the end of the line")
        buf += b
        if len(buf) > limit:
            raise AuthError(f"line longer than {limit} bytes")
    return bytes(buf)


def splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes; closes both. Blocks (two threads)."""
    def one_way(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    t = threading.Thread(target=one_way, args=(b, a), daemon=True)
    t.start()
    one_way(a, b)
    t.join()
    a.close()
    b.close()


def accept_forever(listener: socket.socket, handle, name: str) -> None:
    """Hand each accepted connection to ``handle(conn, peer)`` on a thread of its own, in a
    daemon thread, until ``listener`` is closed."""
    def loop() -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn, peer), name=f"{name}-conn", daemon=True).start()

    threading.Thread(target=loop, name=name, daemon=True).start()


class Forwarder:
    """The pod's end: listens on 127.0.0.1, and for each connection torchrun makes, opens
    one to the gateway, presents the job's token and splices the two."""

    def __init__(self, upstream: tuple[str, int], namespace: str, job: str, token: str) -> None:
        self.upstream = upstream
        self._hello = preamble(namespace, job, token)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        accept_forever(self._listener, self._serve, "rdzv-forwarder")

    def _serve(self, conn: socket.socket, _peer: tuple) -> None:
        try:
            up = self._connect()
            up.sendall(self._hello)
            answer = read_line(up).decode(errors="replace").strip()
            up.settimeout(None)
        except (OSError, AuthError) as e:
            print(f"stoker launch: the rendezvous gateway {self.upstream[0]}:{self.upstream[1]} is unreachable: {e}",
                  file=sys.stderr, flush=True)
            conn.close()
            return
        if answer != "OK":
            print(f"stoker launch: the rendezvous gateway refused this job: {answer}", file=sys.stderr, flush=True)
            up.close()
            conn.close()
            return
        splice(conn, up)

    def _connect(self) -> socket.socket:
        """The gateway, retried for up to UPSTREAM_RETRY_S while it refuses connections (its
        pod starting, e.g. the store Deployment after an install): torch's client would not
        retry a connection that was accepted here and then closed."""
        deadline = time.monotonic() + UPSTREAM_RETRY_S
        delay = 0.1
        while True:
            try:
                return socket.create_connection(self.upstream, timeout=HANDSHAKE_TIMEOUT_S)
            except OSError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def close(self) -> None:
        self._listener.close()


def split_endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def lock_args(args: list[str], environ: Mapping[str, str]) -> tuple[list[str], Forwarder | None]:
    """torchrun's arguments with ``--rdzv-endpoint`` pointed at a new local forwarder, when
    the operator locked the rendezvous (``STOKER_RENDEZVOUS_LOCKED=1``); else unchanged."""
    if environ.get(E.RENDEZVOUS_LOCKED) != "1":
        return args, None
    token, ns, job = environ.get(E.JOB_TOKEN), environ.get(E.JOB_NAMESPACE), environ.get(E.JOB_NAME)
    at = next((i for i, a in enumerate(args) if a.startswith(ENDPOINT_FLAG + "=")), None)
    if not (token and ns and job) or at is None:
        raise SystemExit(f"stoker launch: {E.RENDEZVOUS_LOCKED}=1 but {E.JOB_TOKEN}, {E.JOB_NAMESPACE}, "
                         f"{E.JOB_NAME} or {ENDPOINT_FLAG}= is missing: the pod was not rendered by the operator")
    fwd = Forwarder(split_endpoint(args[at].split("=", 1)[1]), ns, job, token)
    out = list(args)
    out[at] = f"{ENDPOINT_FLAG}=127.0.0.1:{fwd.port}"
    return out, fwd
