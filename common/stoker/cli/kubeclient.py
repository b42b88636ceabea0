"""The on-call CLI's connection to the cluster: the user's kubeconfig
(``--kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``) or the in-cluster
service account, and raw REST calls returning plain dicts. Errors become
:class:`CliError` with an exit code scripts can rely on (see ``EXIT_*``)."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator
from urllib.parse import urlencode

from stoker.common import labels as L

EXIT_OK = 0
EXIT_ERROR = 1          # the request failed (validation, forbidden, a check failed, ...)
EXIT_USAGE = 2          # bad command line (argparse)
EXIT_NOT_FOUND = 3      # the job / node / rank does not exist
EXIT_UNREACHABLE = 4    # no cluster configured, or the API server cannot be reached / rejects our credentials
EXIT_TIMEOUT = 5        # --wait gave up (checkpoint --wait)

JOBS = f"/apis/{L.GROUP}/{L.VERSION}"
HOW_TO_POINT = ("point the CLI at a cluster with --kubeconfig PATH or KUBECONFIG=PATH, "
                "or start a local one with `stoker cluster up` "
                "(then export KUBECONFIG=~/.stoker/cluster/kubeconfig)")


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class ApiError(CliError):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        code = EXIT_NOT_FOUND if status == 404 else EXIT_UNREACHABLE if status == 401 else EXIT_ERROR
        super().__init__(message, code)
        self.status, self.reason = status, reason


def job_path(namespace: str, name: str = "") -> str:
    base = f"{JOBS}/namespaces/{namespace}/{L.PLURAL}"
    return f"{base}/{name}" if name else base


class Kube:
    """Thin REST shell over urllib3 (see kubeconfig.py for how the cluster is found)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None,
                 request_timeout: float = 15.0) -> None:
        from .kubeconfig import ConfigError, load

        if kubeconfig and not os.path.exists(os.path.expanduser(kubeconfig)):
            raise CliError(f"kubeconfig {kubeconfig} does not exist; {HOW_TO_POINT}", EXIT_UNREACHABLE)
        try:
            conn = load(kubeconfig, context)
        except ConfigError as e:
            raise CliError(f"cannot load the cluster configuration: {e}; {HOW_TO_POINT}", EXIT_UNREACHABLE) from e
        if conn is None:
            raise CliError(f"no cluster configured (no --kubeconfig, KUBECONFIG or ~/.kube/config); "
                           f"{HOW_TO_POINT}", EXIT_UNREACHABLE)
        self.conn = conn
        self.namespace = conn.namespace
        self.server = conn.server
        self.timeout = request_timeout
        self._pool = _pool_manager(conn)

    # ---------------------------------------------------------------- requests
    def _headers(self) -> dict[str, str]:
        from .kubeconfig import ConfigError

        headers = {"Accept": "application/json", "User-Agent": "stoker-cli"}
        try:
            auth = self.conn.authorization()  # tokens rotate (exec plugins, projected tokens)
        except ConfigError as e:
            raise CliError(f"cannot get credentials: {e}; {HOW_TO_POINT}", EXIT_UNREACHABLE) from e
        if auth:
            headers["Authorization"] = auth
        return headers

    def request(self, method: str, path: str, *, query: dict | None = None, body: Any = None,
                content_type: str = "application/json", stream: bool = False,
                timeout: Any = "default") -> Any:
        import urllib3

        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        params = {k: (str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in (query or {}).items() if v is not None}
        url = self.server.rstrip("/") + path + ("?" + urlencode(params) if params else "")
        t = self.timeout if timeout == "default" else timeout
        try:
            resp = self._pool.request(method, url, body=data, headers=headers, preload_content=False,
                                      retries=False, timeout=urllib3.Timeout(connect=5.0, read=t))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise CliError(f"cannot reach the Kubernetes API at {self.server}: {_short(e)}; "
                           f"is the cluster running? {HOW_TO_POINT}", EXIT_UNREACHABLE) from None
        if resp.status >= 400:
            err = self._api_error(resp.status, resp.reason, resp.read(), method, path)
            resp.release_conn()
            raise err
        if stream:
            return resp
        raw = resp.read()
        resp.release_conn()
        if not raw:
            return {}
        ctype = resp.headers.get("Content-Type", "")
        if "json" in ctype or raw[:1] in (b"{", b"["):
            return json.loads(raw)
        return raw.decode(errors="replace")

    def _api_error(self, status: int, reason: str, body: bytes, method: str, path: str) -> "ApiError":
        msg, why = "", ""
        try:
            st = json.loads(body or b"{}")
            msg, why = st.get("message", ""), st.get("reason", "")
        except (ValueError, TypeError):
            msg = body.decode(errors="replace")[:500] if body else ""
        if status == 401:
            msg = (f"the API server at {self.server} rejected our credentials (401 Unauthorized); "
                   f"check the user in your kubeconfig. {HOW_TO_POINT}")
        elif status == 403:
            msg = f"forbidden: {msg or method + ' ' + path} (ask for RBAC permission on this resource)"
        return ApiError(status, msg or f"{method} {path}: HTTP {status} {reason}", why)

    def get(self, path: str, **query) -> Any:
        return self.request("GET", path, query=query)

    def patch(self, path: str, body: Any, kind: str = "merge") -> Any:
        ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
                 "strategic": "application/strategic-merge-patch+json"}[kind]
        return self.request("PATCH", path, body=body, content_type=ctype)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body=body)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def stream_lines(self, path: str, query: dict) -> Iterator[bytes]:
        resp = self.request("GET", path, query=query, stream=True, timeout=None)
        try:
            pending = b""
            for chunk in resp.stream(4096, decode_content=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line + b"\n"
            if pending:
                yield pending
        finally:
            resp.release_conn()

    # ------------------------------------------------------------------- jobs
    def list_jobs(self, namespace: str | None, selector: str | None = None) -> list[dict]:
        path = f"{JOBS}/{L.PLURAL}" if namespace is None else job_path(namespace)
        try:
            return self.get(path, labelSelector=selector).get("items", [])
        except ApiError as e:
            if e.status == 404:
                raise CliError(f"the TrainingJob API ({L.GROUP}/{L.VERSION}) is not served: the CRD is not "
                               f"installed; install it with `kubectl apply -f crds/` or `helm install stoker "
                               f"charts/stoker` (check with `stoker doctor`)", EXIT_ERROR) from None
            raise

    def get_job(self, namespace: str, name: str) -> dict:
        from .facts import near_names

        try:
            return self.get(job_path(namespace, name))
        except ApiError as e:
            if e.status != 404:
                raise
        names = [j["metadata"]["name"] for j in self.list_jobs(namespace)]
        near = near_names(name, names)
        hint = f"; did you mean: {', '.join(near)}?" if near else (
            f"; jobs in {namespace}: {', '.join(sorted(names)[:10])}" if names else
            f"; there are no TrainingJobs in namespace {namespace} (try -A to list all namespaces)")
        raise CliError(f'TrainingJob "{name}" not found in namespace {namespace}{hint}', EXIT_NOT_FOUND)

    def job_pods(self, namespace: str | None, job: str | None = None) -> list[dict]:
        sel = f"{L.JOB_NAME}={job}" if job else L.JOB_NAME
        path = "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{namespace}/pods"
        return self.get(path, labelSelector=sel).get("items", [])

    def close(self) -> None:
        self._pool.clear()


def _pool_manager(conn):
    import ssl

    import urllib3

    kw: dict[str, Any] = {"num_pools": 4, "maxsize": 16}
    if conn.verify:
        kw["cert_reqs"] = ssl.CERT_REQUIRED
        if conn.ca_file:
            kw["ca_certs"] = conn.ca_file
        if conn.tls_server_name:
            kw["server_hostname"] = conn.tls_server_name
    else:
        kw["cert_reqs"] = ssl.CERT_NONE
    if conn.cert_file:
        kw["cert_file"], kw["key_file"] = conn.cert_file, conn.key_file
    if conn.proxy:
        return urllib3.ProxyManager(conn.proxy, **kw)
    return urllib3.PoolManager(**kw)


def _short(e: BaseException) -> str:
    s = str(getattr(e, "reason", None) or e)
    return s if len(s) < 200 else s[:200] + "..."
