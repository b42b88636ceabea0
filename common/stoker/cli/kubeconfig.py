"""Where the on-call CLI finds the cluster, without the `kubernetes` package
(75 MB installed; the CLI needs only PyYAML and urllib3).

Reads kubeconfig files the way kubectl does: ``--kubeconfig PATH``, else every
file of ``KUBECONFIG`` (``:``-separated, the first file that names a context,
cluster or user wins), else ``~/.kube/config``; else the in-cluster service
account. Credentials: client certificates (file or ``-data``), bearer tokens
(``token``, ``tokenFile``), basic auth, an OIDC ``auth-provider``'s id-token and
``exec`` credential plugins (``client.authentication.k8s.io``; EKS, GKE, AKS),
whose token is reused until it expires.
"""
from __future__ import annotations

import atexit
import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


@dataclass
class Connection:
    server: str
    namespace: str = "default"
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_server_name: str | None = None
    proxy: str | None = None
    # Returns the Authorization header's value (or "") at each request: tokens rotate.
    authorization: Callable[[], str] = field(default=lambda: "")


def kubeconfig_files(path: str | None) -> list[str]:
    """The files to read, in precedence order; [] means "none configured"."""
    if path:
        return [os.path.expanduser(path)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p and os.path.exists(os.path.expanduser(p))]
    default = os.path.expanduser("~/.kube/config")
    return [default] if os.path.exists(default) else []


def load(path: str | None = None, context: str | None = None) -> Connection | None:
    """The connection of `context` (or the current one); None when nothing is configured
    and we are not inside a cluster."""
    files = kubeconfig_files(path)
    if files:
        return from_kubeconfig(merge([_read(f) for f in files]), context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    return None


def _read(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read kubeconfig {path}: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping")
    base = os.path.dirname(os.path.abspath(path))
    for section, key in (("clusters", "cluster"), ("users", "user")):
        for entry in doc.get(section) or []:
            _resolve_paths(entry.get(key) or {}, base)
    return doc


def _resolve_paths(d: dict, base: str) -> None:
    """Relative file references are relative to the kubeconfig that holds them."""
    for k in ("certificate-authority", "client-certificate", "client-key", "tokenFile"):
        if d.get(k) and not os.path.isabs(os.path.expanduser(d[k])):
            d[k] = os.path.join(base, d[k])


def merge(docs: list[dict]) -> dict:
    """kubectl's merge: the first file that defines a name (or current-context) wins."""
    out: dict[str, Any] = {"clusters": [], "contexts": [], "users": [], "current-context": ""}
    for doc in docs:
        out["current-context"] = out["current-context"] or doc.get("current-context") or ""
        for section in ("clusters", "contexts", "users"):
            seen = {e.get("name") for e in out[section]}
            out[section] += [e for e in doc.get(section) or [] if e.get("name") not in seen]
    return out


def _named(doc: dict, section: str, name: str, what: str) -> dict:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return entry.get(what) or {}
    known = ", ".join(str(e.get("name")) for e in doc.get(section) or []) or "none"
    raise ConfigError(f"{what} {name!r} is not in the kubeconfig ({section}: {known})")


def from_kubeconfig(doc: dict, context: str | None = None) -> Connection:
    name = context or doc.get("current-context")
    if not name:
        raise ConfigError("the kubeconfig has no current-context; pass --context NAME")
    ctx = _named(doc, "contexts", name, "context")
    cluster = _named(doc, "clusters", ctx.get("cluster", ""), "cluster")
    user = _named(doc, "users", ctx["user"], "user") if ctx.get("user") else {}
    if not cluster.get("server"):
        raise ConfigError(f"cluster {ctx.get('cluster')!r} has no server")
    conn = Connection(server=cluster["server"], namespace=ctx.get("namespace") or "default",
                      verify=not cluster.get("insecure-skip-tls-verify", False),
                      ca_file=_file(cluster, "certificate-authority"),
                      tls_server_name=cluster.get("tls-server-name"), proxy=cluster.get("proxy-url"))
    conn.cert_file = _file(user, "client-certificate")
    conn.key_file = _file(user, "client-key")
    conn.authorization = _authorization(user, conn)
    return conn


def in_cluster() -> Connection:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    try:
        with open(f"{SA_DIR}/namespace") as f:
            namespace = f.read().strip() or "default"
    except OSError:
        namespace = "default"
    token_file = f"{SA_DIR}/token"
    return Connection(server=f"https://{host}:{port}", namespace=namespace, ca_file=f"{SA_DIR}/ca.crt",
                      authorization=lambda: "Bearer " + _read_text(token_file))


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from None


# ------------------------------------------------------------------ credentials
_TMP: list[str] = []


def _file(d: dict, key: str) -> str | None:
    """A path for `key`, writing `key`-data to a private temporary file if need be."""
    if d.get(f"{key}-data"):
        try:
            data = base64.b64decode(d[f"{key}-data"])
        except ValueError:
            raise ConfigError(f"{key}-data is not valid base64") from None
        return _temp_file(data)
    if d.get(key):
        path = os.path.expanduser(d[key])
        if not os.path.exists(path):
            raise ConfigError(f"{key} {path} does not exist")
        return path
    return None


def _temp_file(data: bytes) -> str:
    if not _TMP:
        _TMP.append(tempfile.mkdtemp(prefix="stoker-kube-"))
        atexit.register(shutil.rmtree, _TMP[0], True)
    fd, path = tempfile.mkstemp(dir=_TMP[0])
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _authorization(user: dict, conn: Connection) -> Callable[[], str]:
    if user.get("token"):
        return lambda: f"Bearer {user['token']}"
    if user.get("tokenFile"):
        return lambda: "Bearer " + _read_text(user["tokenFile"])
    if user.get("username") and user.get("password") is not None:
        basic = base64.b64encode(f"{user['username']}:{user['password']}".encode()).decode()
        return lambda: f"Basic {basic}"
    if user.get("exec"):
        return ExecCredential(user["exec"], conn).authorization
    provider = user.get("auth-provider") or {}
    if provider:
        token = (provider.get("config") or {}).get("id-token")
        if not token:
            raise ConfigError(f"auth-provider {provider.get('name')!r} is not supported without an id-token; "
                              "use an exec credential plugin (users[].user.exec) instead")
        return lambda: f"Bearer {token}"
    return lambda: ""


class ExecCredential:
    """A `client.authentication.k8s.io` exec plugin, run again only when its token expires."""

    def __init__(self, spec: dict, conn: Connection) -> None:
        if not spec.get("command"):
            raise ConfigError("users[].user.exec has no command")
        self.spec, self.conn = spec, conn
        self.token, self.expires = "", None
        self._run()  # client certificates must be known before the first request

    def authorization(self) -> str:
        now = dt.datetime.now(dt.timezone.utc)
        if self.expires is not None and now >= self.expires - dt.timedelta(seconds=10):
            self._run()
        return f"Bearer {self.token}" if self.token else ""

    def _run(self) -> None:
        spec = self.spec
        env = dict(os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []})
        env["KUBERNETES_EXEC_INFO"] = json.dumps({
            "apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"),
            "kind": "ExecCredential", "spec": {"interactive": False}})
        try:
            out = subprocess.run([spec["command"], *(spec.get("args") or [])], env=env, capture_output=True,
                                 text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            hint = spec.get("installHint") or ""
            raise ConfigError(f"exec credential plugin {spec['command']!r} failed: {e}. {hint}".strip()) from None
        if out.returncode != 0:
            raise ConfigError(f"exec credential plugin {spec['command']!r} exited {out.returncode}: "
                              f"{out.stderr.strip()[:300]}")
        try:
            status = json.loads(out.stdout).get("status") or {}
        except ValueError:
            raise ConfigError(f"exec credential plugin {spec['command']!r} printed no ExecCredential JSON") from None
        self.token = status.get("token", "")
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            self.conn.cert_file = _temp_file(status["clientCertificateData"].encode())
            self.conn.key_file = _temp_file(status["clientKeyData"].encode())
        stamp = status.get("expirationTimestamp")
        self.expires = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
