"""A minimal kubelet-compatible HTTPS endpoint: container logs, so that
``kubectl logs`` and ``read_namespaced_pod_log`` work for process-node pods.

The apiserver proxies ``GET /api/v1/namespaces/NS/pods/POD/log`` to
``https://<node InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/CONTAINER``
with its kubelet client certificate (``--kubelet-client-certificate``). This
server:

* listens on the node address (127.N.0.1), port 10250 if free, else an
  ephemeral one (the Node status publishes whichever it got);
* serves with a self-signed certificate made at startup (the local apiserver
  runs without ``--kubelet-certificate-authority``, as kubeadm does by default);
* requires a client certificate signed by ``--kubelet-client-ca`` (the cluster
  CA) whose subject has O=system:masters or CN=kube-apiserver-kubelet-client;
  anything else gets 401/403. There is no SubjectAccessReview.

Supported: ``GET /containerLogs/{ns}/{pod}/{container}`` with ``follow``,
``tailLines``, ``limitBytes``, ``previous`` (each container start appends its
byte offset to ``<container>.log.starts``, so the current and the previous
instance are known), and ``GET /healthz``. Not supported: ``timestamps``,
``sinceSeconds``/``sinceTime`` (ignored), exec/attach/port-forward/metrics.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("nodeagent.kubeletapi")

DEFAULT_PORT = 10250
ALLOWED_ORG = "system:masters"
ALLOWED_CN = "kube-apiserver-kubelet-client"
FOLLOW_POLL_S = 0.2
CHUNK = 64 * 1024


# ------------------------------------------------------------------ pure parts
def starts_path(log_path: str) -> str:
    return log_path + ".starts"


def record_start(log_path: str) -> None:
    """Append the log's current size (where this container instance begins)."""
    try:
        size = os.path.getsize(log_path)
    except OSError:
        size = 0
    with open(starts_path(log_path), "a") as f:
        f.write(f"{size}\n")


def read_starts(log_path: str) -> list[int]:
    try:
        with open(starts_path(log_path)) as f:
            return [int(x) for x in f.read().split() if x.strip().isdigit()]
    except OSError:
        return []


def instance_range(starts: list[int], size: int, previous: bool) -> tuple[int, int] | None:
    """Byte range [begin, end) of the current (or previous) container instance
    in a log appended across restarts; None if there is no previous instance."""
    starts = [s for s in starts if 0 <= s <= size]
    if previous:
        if len(starts) < 2:
            return None
        return starts[-2], starts[-1]
    return (starts[-1] if starts else 0), size


def tail_lines(data: bytes, n: int) -> bytes:
    """The last n lines of data (a trailing newline does not count as a line)."""
    if n <= 0:
        return b""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    pos = end
    for _ in range(n):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1:]


# The kubelet's terminationMessagePolicy FallbackToLogsOnError: the last 80 lines, at most
# 2048 bytes, of a container that failed without writing a termination message.
TERMINATION_LOG_LINES = 80
TERMINATION_LOG_BYTES = 2048


def termination_log_tail(log_path: str) -> str:
    """The FallbackToLogsOnError message of the container instance that just ended."""
    try:
        with open(log_path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    begin, end = instance_range(read_starts(log_path), len(data), previous=False) or (0, len(data))
    tail = tail_lines(data[begin:end], TERMINATION_LOG_LINES)[-TERMINATION_LOG_BYTES:]
    return tail.decode("utf-8", "replace").strip()


def parse_log_path(path: str) -> tuple[str, str, str] | None:
    parts = [unquote(p) for p in urlsplit(path).path.split("/") if p]
    if len(parts) == 4 and parts[0] == "containerLogs" and all(parts[1:]):
        if any("/" in p or p in (".", "..") for p in parts[1:]):
            return None
        return parts[1], parts[2], parts[3]
    return None


def authorized(peer_cert: dict | None) -> bool:
    """Subject of a verified client certificate (ssl.getpeercert() form)."""
    if not peer_cert:
        return False
    attrs = [a for rdn in peer_cert.get("subject", ()) for a in rdn]
    orgs = {v for k, v in attrs if k == "organizationName"}
    cns = {v for k, v in attrs if k == "commonName"}
    return ALLOWED_ORG in orgs or ALLOWED_CN in cns


def _flag(q: dict, name: str) -> bool:
    return (q.get(name) or ["false"])[-1].lower() in ("1", "true", "yes")


def _int(q: dict, name: str) -> int | None:
    v = (q.get(name) or [None])[-1]
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        raise ValueError(f"query parameter {name}={v!r} is not an integer") from None


# --------------------------------------------------------------------- serving
def self_signed(cert_dir: str, ip: str, node: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(cert_dir, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node}@stoker-nodeagent")])
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(node), x509.IPAddress(ipaddress.ip_address(ip))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    crt, k = os.path.join(cert_dir, "kubelet.crt"), os.path.join(cert_dir, "kubelet.key")
    with open(k, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(k, 0o600)
    with open(crt, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return crt, k


class KubeletServer:
    """Serves container logs from ``<state_dir>/pods/<ns>_<pod>/<container>.log``.
    ``is_running(ns, pod, container)`` says whether a follow should keep going."""

    def __init__(self, *, state_dir: str, ip: str, node: str, client_ca: str,
                 is_running: Callable[[str, str, str], bool], stop: threading.Event,
                 port: int = DEFAULT_PORT) -> None:
        self.state_dir, self.ip, self.node = state_dir, ip, node
        self.is_running, self.stop = is_running, stop
        crt, key = self_signed(os.path.join(state_dir, "kubelet"), ip, node)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
        handler = _make_handler(self)
        try:
            self.httpd = ThreadingHTTPServer((ip, port), handler)
        except OSError:
            self.httpd = ThreadingHTTPServer((ip, 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # refused handshakes are logged above
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.httpd.server_address[1]

    def log_file(self, ns: str, pod: str, container: str) -> str:
        return os.path.join(self.state_dir, "pods", f"{ns}_{pod}", f"{container}.log")

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                         name="kubelet-api", daemon=True).start()
        log.info("kubelet API serving", extra={"address": f"{self.ip}:{self.port}"})

    def shutdown(self) -> None:
        self.httpd.shutdown()


def _make_handler(server: KubeletServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet; the agent logs JSON
            pass

        def setup(self):
            super().setup()
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as e:
                log.info("kubelet API handshake refused", extra={"error": str(e)[:200]})
                raise

        def _plain(self, code: int, msg: str) -> None:
            body = (msg.rstrip("\n") + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if not authorized(self.connection.getpeercert()):
                return self._plain(403, "Forbidden: the kubelet API of a process node serves the apiserver only "
                                        "(client certificate with O=system:masters or CN=kube-apiserver-kubelet-client)")
            url = urlsplit(self.path)
            if url.path == "/healthz":
                return self._plain(200, "ok")
            target = parse_log_path(url.path)
            if target is None:
                return self._plain(404, f"not found: {url.path} (this process node serves /containerLogs only)")
            try:
                q = parse_qs(url.query)
                follow, previous = _flag(q, "follow"), _flag(q, "previous")
                tail, limit = _int(q, "tailLines"), _int(q, "limitBytes")
            except ValueError as e:
                return self._plain(400, str(e))
            self._logs(*target, follow=follow, previous=previous, tail=tail, limit=limit)

        def _logs(self, ns, pod, container, *, follow, previous, tail, limit):
            path = server.log_file(ns, pod, container)
            if not os.path.exists(path):
                return self._plain(404, f'container "{container}" in pod "{pod}" in namespace "{ns}" has no logs '
                                        f"on node {server.node} (not started yet?)")
            size = os.path.getsize(path)
            rng = instance_range(read_starts(path), size, previous)
            if rng is None:
                return self._plain(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            begin, end = rng
            with open(path, "rb") as f:
                f.seek(begin)
                data = f.read(end - begin)
            if tail is not None:
                data = tail_lines(data, tail)
            if limit is not None:
                data = data[:max(limit, 0)]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            if not follow or previous:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = len(data)
            try:
                self._chunk(data)
                pos = end
                idle_checks = 0
                while not server.stop.is_set() and (limit is None or sent < limit):
                    with open(path, "rb") as f:
                        f.seek(pos)
                        more = f.read(CHUNK)
                    if more:
                        if limit is not None:
                            more = more[:limit - sent]
                        pos += len(more)
                        sent += len(more)
                        self._chunk(more)
                        continue
                    if not server.is_running(ns, pod, container):
                        idle_checks += 1
                        if idle_checks >= 2:  # one more read after the exit was seen
                            break
                    # a restart starts a new instance: stop following the old one
                    starts = read_starts(path)
                    if starts and starts[-1] > begin and pos >= starts[-1]:
                        break
                    time.sleep(FOLLOW_POLL_S)
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                pass
            self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler
