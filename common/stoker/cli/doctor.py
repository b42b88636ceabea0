"""`stoker doctor [JOB]`: is everything a TrainingJob needs in place? Prints a
PASS/FAIL/SKIP table (or ``-o json|yaml``); exit 0 only if nothing FAILs
(4 if the API server cannot be reached, else 1).

Checks:
  api            GET /version answers (server version)
  auth           who we are (SelfSubjectReview) and that we may list and patch
                 TrainingJobs in the namespace (SelfSubjectAccessReview)
  crd            trainingjobs.stoker.dev is Established and serves the version
                 this CLI speaks (stoker.common.labels.VERSION)
  operator       an operator is running for the namespace: either a Ready pod
                 labelled app.kubernetes.io/name=stoker,
                 app.kubernetes.io/component=operator (the Helm chart), or a
                 local process (``python -m stoker.operator.main`` or
                 ``stoker operator run``) whose kubeconfig points at this API
                 server and whose STOKER_OPERATOR_NAMESPACES includes the
                 namespace (empty = all). A local process is found through
                 /proc, so only one started by the same user on this machine.
  job            (with JOB) it exists and has not Failed
  bucket         (with JOB) spec.checkpoint.uri's bucket answers HeadBucket
                 with the keys (and endpoint/region) of the job's
                 spec.checkpoint.credentialsSecretRef Secret
"""
from __future__ import annotations

import base64
import os
import sys
from stoker.common import env as E
from stoker.common import labels as L

from . import common
from .kubeclient import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, ApiError, CliError, Kube
from .output import dumps, paint_state, table

CRD_NAME = f"{L.PLURAL}.{L.GROUP}"
OPERATOR_SELECTOR = f"{L.APP_NAME}=stoker,{L.APP_COMPONENT}=operator"


def _row(check: str, status: str, detail: str) -> dict:
    return {"check": check, "status": status, "detail": detail}


# ----------------------------------------------------------------- the checks
def check_api(kube: Kube) -> dict:
    v = kube.get("/version")
    return _row("api", "PASS", f"{kube.server} answers (Kubernetes {v.get('gitVersion', '?')})")


def check_auth(kube: Kube, namespace: str) -> dict:
    who = "?"
    try:
        r = kube.post("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                      {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        ui = (r.get("status") or {}).get("userInfo") or {}
        who = ui.get("username", "?")
    except ApiError:
        pass
    denied = []
    for verb in ("list", "patch"):
        r = kube.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": L.GROUP,
                                            "resource": L.PLURAL}}})
        if not (r.get("status") or {}).get("allowed"):
            denied.append(verb)
    if denied:
        return _row("auth", "FAIL", f"as {who}: may not {'/'.join(denied)} {L.PLURAL}.{L.GROUP} in namespace "
                                    f"{namespace}; ask for a Role granting it")
    return _row("auth", "PASS", f"as {who}; may list/patch {L.PLURAL} in {namespace}")


def check_crd(kube: Kube) -> dict:
    try:
        crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}")
    except ApiError as e:
        if e.status == 404:
            return _row("crd", "FAIL", f"{CRD_NAME} is not installed: kubectl apply -f crds/ "
                                       f"(or helm install stoker charts/stoker)")
        if e.status != 403:
            raise
        try:  # no permission to read CRDs: discovery tells whether the version is served
            kube.get(f"/apis/{L.GROUP}/{L.VERSION}")
            return _row("crd", "PASS", f"{L.GROUP}/{L.VERSION} is served (CRD itself not readable)")
        except ApiError:
            return _row("crd", "FAIL", f"{L.GROUP}/{L.VERSION} is not served: install crds/")
    served = [v["name"] for v in crd["spec"].get("versions", []) if v.get("served")]
    storage = next((v["name"] for v in crd["spec"].get("versions", []) if v.get("storage")), "?")
    established = any(c.get("type") == "Established" and c.get("status") == "True"
                      for c in (crd.get("status") or {}).get("conditions") or [])
    if not established:
        return _row("crd", "FAIL", f"{CRD_NAME} exists but is not Established yet")
    if L.VERSION not in served:
        return _row("crd", "FAIL", f"{CRD_NAME} serves {', '.join(served)}, but this CLI speaks {L.VERSION}: "
                                   f"upgrade the CRD (kubectl apply -f crds/) or the CLI")
    return _row("crd", "PASS", f"{CRD_NAME} Established; versions {', '.join(served)} (storage {storage})")


def _server_of(kubeconfig: str) -> str | None:
    try:
        import yaml

        with open(os.path.expanduser(kubeconfig)) as f:
            cfg = yaml.safe_load(f) or {}
        ctx_name = cfg.get("current-context")
        ctx = next((c["context"] for c in cfg.get("contexts") or [] if c.get("name") == ctx_name), {})
        cl = next((c["cluster"] for c in cfg.get("clusters") or [] if c.get("name") == ctx.get("cluster")), {})
        return cl.get("server")
    except Exception:  # noqa: BLE001 - unreadable or not YAML: not ours to judge
        return None


def local_operators(proc: str = "/proc") -> list[dict]:
    """Operator processes of this user on this machine: pid, namespaces, server."""
    out = []
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            if not is_operator_argv(argv):
                continue
            with open(f"{proc}/{pid}/environ", "rb") as f:
                env = dict(e.decode(errors="replace").partition("=")[::2] for e in f.read().split(b"\0") if b"=" in e)
            cwd = os.readlink(f"{proc}/{pid}/cwd")
        except OSError:  # gone, or another user's process
            continue
        kc = os.path.expanduser(env.get("STOKER_OPERATOR_KUBECONFIG") or env.get("KUBECONFIG") or "~/.kube/config")
        kc = kc.split(os.pathsep)[0]
        if not os.path.isabs(kc):
            kc = os.path.join(cwd, kc)
        ns = [n for n in (env.get("STOKER_OPERATOR_NAMESPACES") or "").split(",") if n]
        out.append({"pid": int(pid), "namespaces": ns, "server": _server_of(kc)})
    return out


def is_operator_argv(argv: list[str]) -> bool:
    if "stoker.operator.main" in argv:
        return True
    for i, a in enumerate(argv):
        if os.path.basename(a) in ("stoker", "kubectl-stoker") and argv[i + 1:i + 3] == ["operator", "run"]:
            return True
    return False


def operator_matches(op: dict, server: str, namespace: str) -> bool:
    return op.get("server") == server and (not op["namespaces"] or namespace in op["namespaces"])


def check_operator(kube: Kube, namespace: str) -> dict:
    try:
        pods = kube.get("/api/v1/pods", labelSelector=OPERATOR_SELECTOR).get("items", [])
    except ApiError as e:
        if e.status != 403:
            raise
        pods = []
    ready = [p for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                    for c in (p.get("status") or {}).get("conditions") or [])]
    if ready:
        names = ", ".join(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in ready)
        return _row("operator", "PASS", f"operator pod(s) Ready: {names}")
    mine = [op for op in local_operators() if operator_matches(op, kube.server, namespace)]
    if mine:
        op = mine[0]
        scope = ",".join(op["namespaces"]) or "all namespaces"
        return _row("operator", "PASS", f"local operator process pid {op['pid']} watching {scope}")
    hint = (f"{len(pods)} operator pod(s) found but none Ready" if pods else
            f"no Ready pod labelled {OPERATOR_SELECTOR} and no local operator process for namespace {namespace}")
    return _row("operator", "FAIL", f"{hint}: install the chart (helm install stoker charts/stoker) or run "
                                    f"`stoker operator run --namespace {namespace}`")


def check_job(kube: Kube, namespace: str, name: str) -> tuple[dict, dict | None]:
    try:
        job = kube.get_job(namespace, name)
    except CliError as e:
        return _row("job", "FAIL", str(e)), None
    phase = (job.get("status") or {}).get("phase") or "Pending"
    if phase == "Failed":
        st = job["status"]
        return _row("job", "FAIL", f"{name} Failed: {st.get('reason', '')} {st.get('message', '')}".strip()), job
    return _row("job", "PASS", f"{namespace}/{name} exists, phase {phase}"), job


def _secret_values(kube: Kube, namespace: str, name: str) -> dict[str, str]:
    s = kube.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    vals = {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
    vals.update(s.get("stringData") or {})
    return vals


def check_bucket(kube: Kube, namespace: str, job: dict) -> dict:
    ck = (job.get("spec") or {}).get("checkpoint") or {}
    uri = ck.get("uri")
    if not uri:
        return _row("bucket", "SKIP", "the job has no spec.checkpoint (it never saves or resumes)")
    bucket = uri[len("s3://"):].split("/", 1)[0]
    ref = (ck.get("credentialsSecretRef") or {}).get("name")
    if not ref:
        return _row("bucket", "SKIP", f"{uri}: no spec.checkpoint.credentialsSecretRef; workers use the "
                                      f"credentials of their environment, which doctor cannot check")
    try:
        vals = _secret_values(kube, namespace, ref)
    except ApiError as e:
        what = "does not exist" if e.status == 404 else str(e)
        return _row("bucket", "FAIL", f"Secret {namespace}/{ref} (spec.checkpoint.credentialsSecretRef) {what}")
    missing = [k for k in (E.S3_ACCESS_KEY, E.S3_SECRET_KEY) if not vals.get(k)]
    if missing:
        return _row("bucket", "FAIL", f"Secret {namespace}/{ref} lacks {', '.join(missing)}")
    endpoint = vals.get(E.S3_ENDPOINT) or None
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return _row("bucket", "SKIP", "boto3 is not installed here: pip install 'stoker[worker]' "
                                      "(or boto3) to check the bucket")
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=vals[E.S3_ACCESS_KEY],
                      aws_secret_access_key=vals[E.S3_SECRET_KEY], region_name=vals.get(E.S3_REGION) or "us-east-1",
                      config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))
    where = endpoint or "AWS S3"
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return _row("bucket", "FAIL", f"bucket {bucket} does not exist at {where}: create it or fix spec.checkpoint.uri")
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return _row("bucket", "FAIL", f"bucket {bucket} at {where}: access denied ({code}) with the keys of "
                                          f"Secret {ref}: check {E.S3_ACCESS_KEY}/{E.S3_SECRET_KEY}")
        return _row("bucket", "FAIL", f"bucket {bucket} at {where}: {code or e}")
    except BotoCoreError as e:
        return _row("bucket", "FAIL", f"cannot reach {where} for bucket {bucket}: {e} "
                                      f"(check {E.S3_ENDPOINT} in Secret {ref})")
    return _row("bucket", "PASS", f"s3://{bucket} reachable at {where} with Secret {ref}")


# ------------------------------------------------------------------- command
def run_checks(kube: Kube | None, namespace: str, job_name: str | None, connect_error: CliError | None) -> list[dict]:
    names = ["api", "auth", "crd", "operator"] + (["job", "bucket"] if job_name else [])
    if kube is None:
        return [_row("api", "FAIL", str(connect_error))] + [_row(n, "SKIP", "no cluster") for n in names[1:]]
    rows: list[dict] = []
    try:
        rows.append(check_api(kube))
    except CliError as e:
        return [_row("api", "FAIL", str(e))] + [_row(n, "SKIP", "API unreachable") for n in names[1:]]
    for name, fn in (("auth", lambda: check_auth(kube, namespace)), ("crd", lambda: check_crd(kube)),
                     ("operator", lambda: check_operator(kube, namespace))):
        try:
            rows.append(fn())
        except CliError as e:
            rows.append(_row(name, "FAIL", str(e)))
    if job_name:
        row, job = check_job(kube, namespace, job_name)
        rows.append(row)
        if job is None:
            rows.append(_row("bucket", "SKIP", "no job"))
        else:
            try:
                rows.append(check_bucket(kube, namespace, job))
            except CliError as e:
                rows.append(_row("bucket", "FAIL", str(e)))
    return rows


def exit_code(rows: list[dict]) -> int:
    if rows and rows[0]["check"] == "api" and rows[0]["status"] == "FAIL":
        return EXIT_UNREACHABLE
    return EXIT_ERROR if any(r["status"] == "FAIL" for r in rows) else EXIT_OK


def cmd_doctor(args) -> int:
    from .output import use_colour

    colour = use_colour(sys.stdout)
    kube, err = None, None
    try:
        kube = common.connect(args)
    except CliError as e:
        err = e
    ns = args.namespace or "default"
    try:
        rows = run_checks(kube, ns, args.job, err)
    finally:
        if kube:
            kube.close()
    ok = all(r["status"] != "FAIL" for r in rows)
    if args.output != "table":
        print(dumps({"namespace": ns, "job": args.job, "ok": ok, "checks": rows}, args.output))
    else:
        print(table(["CHECK", "STATUS", "DETAIL"], [[r["check"], paint_state(r["status"], colour), r["detail"]]
                                                     for r in rows]))
    return exit_code(rows)


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("doctor", parents=[common.global_flags()], help="check the cluster, CRD, operator and a job's bucket",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", nargs="?")
    p.set_defaults(func=cmd_doctor)

