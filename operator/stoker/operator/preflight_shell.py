"""Preflight I/O: look up what a job refers to (preflight.py decides what is wrong).

Runs only in passes that are about to create pods. Secrets and ConfigMaps are read by
name (RBAC: get); one that cannot be read for another reason (403) is left unchecked.
The checkpoint bucket is checked with a HEAD using the job's credentials Secret, only
when boto3 is installed and the endpoint answers (an unreachable S3 is not reported
here: the workers' own retries and `stoker doctor` cover it); answers are cached for
BUCKET_CACHE_S per (uri, Secret version) so a waiting job is not a HEAD per pass.
"""
from __future__ import annotations

import base64
import logging
import time
from typing import Any
from urllib.parse import quote

from stoker.common import env as E

from . import preflight
from .jobspec import JobView
from .kube import Kube, KubeError
from .waiting import Waiting

log = logging.getLogger("stoker.operator.preflight")
BUCKET_CACHE_S = 30.0
PLURAL = {"Secret": "secrets", "ConfigMap": "configmaps"}


class Preflight:
    def __init__(self, kube: Kube, s3_endpoint: str | None = None) -> None:
        self.kube = kube
        self.s3_endpoint = s3_endpoint
        self._bucket: dict[tuple[str, str], tuple[float, str]] = {}

    def check(self, job: JobView) -> Waiting | None:
        refs = preflight.references(job)
        objects: dict[tuple[str, str], dict[str, Any] | None] = {}
        for r in refs:
            if (r.kind, r.name) not in objects:
                got = self._get(job.namespace, r.kind, r.name)
                if got is not False:
                    objects[(r.kind, r.name)] = got  # type: ignore[assignment]
        found = {k: (None if o is None else frozenset(_keys(o))) for k, o in objects.items()}
        problem = preflight.verdict(refs, found)
        if problem is not None or not job.checkpoint:
            return problem
        secret = (job.checkpoint.get("credentialsSecretRef") or {}).get("name")
        return self._check_bucket(str(job.checkpoint.get("uri") or ""), secret, objects.get(("Secret", secret or "")))

    def _get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None | bool:
        """The object, None if it does not exist, False if it cannot be read."""
        try:
            status, body = self.kube.request("GET", f"/api/v1/namespaces/{quote(namespace)}/{PLURAL[kind]}/"
                                                    f"{quote(name)}", ok=(200, 404))
        except KubeError as e:
            log.debug("preflight cannot read", extra={"kind": kind, "name": name, "error": str(e)[:200]})
            return False
        return body if status == 200 else None

    def _check_bucket(self, uri: str, secret: str | None, obj: dict[str, Any] | None) -> Waiting | None:
        if not uri.startswith("s3://") or not secret or not obj:
            return None
        vals = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        endpoint = vals.get(E.S3_ENDPOINT) or self.s3_endpoint
        key = (uri, f"{secret}@{(obj.get('metadata') or {}).get('resourceVersion')}")
        cached = self._bucket.get(key)
        if cached and time.monotonic() - cached[0] < BUCKET_CACHE_S:
            code = cached[1]
        else:
            code = self._head(uri, vals, endpoint)
            self._bucket[key] = (time.monotonic(), code)
        return preflight.bucket_verdict(uri, code, endpoint or "AWS S3", secret)

    @staticmethod
    def _head(uri: str, vals: dict[str, str], endpoint: str | None) -> str:
        """"" if the bucket answers, else the S3 error code; "" too when S3 cannot be asked."""
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            return ""
        bucket = uri[len("s3://"):].split("/", 1)[0]
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=vals.get(E.S3_ACCESS_KEY),
                          aws_secret_access_key=vals.get(E.S3_SECRET_KEY),
                          region_name=vals.get(E.S3_REGION) or "us-east-1",
                          config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as e:
            return str(e.response.get("Error", {}).get("Code", ""))
        except BotoCoreError as e:
            log.debug("preflight cannot reach S3", extra={"endpoint": endpoint, "error": str(e)[:200]})
        return ""


def _keys(obj: dict[str, Any]) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})
