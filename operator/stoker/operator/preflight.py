"""Preflight: what a job refers to, checked before its pods are created. Pure.

A worker pod that names a missing Secret or ConfigMap (or a missing key in one)
would sit in CreateContainerConfigError, holding its node; a checkpoint bucket that
does not exist or refuses the job's keys would fail the first save. The shell
(preflight_shell.py) looks up what ``references`` lists; ``verdict`` turns the answers
into one waiting.Waiting (reason MissingSecret, MissingConfigMap,
CheckpointBucketMissing, CheckpointAccessDenied) that holds the creates and becomes
the job's Waiting condition, until the next pass finds it fixed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

from stoker.common import env as E

from .jobspec import JobView
from .waiting import Waiting

MISSING_SECRET = "MissingSecret"
MISSING_CONFIGMAP = "MissingConfigMap"
BUCKET_MISSING = "CheckpointBucketMissing"
BUCKET_DENIED = "CheckpointAccessDenied"
REASONS = (MISSING_SECRET, MISSING_CONFIGMAP, BUCKET_MISSING, BUCKET_DENIED)
CREDENTIALS = "spec.checkpoint.credentialsSecretRef"


@dataclasses.dataclass(frozen=True)
class Ref:
    kind: str          # Secret | ConfigMap
    name: str
    key: str | None    # a key that must exist, or None (the object must)
    field: str         # where the job names it


def _env_refs(c: Mapping[str, Any], where: str) -> Iterator[Ref]:
    for i, e in enumerate(c.get("env") or []):
        src = e.get("valueFrom") or {}
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            ref = src.get(key)
            if ref and ref.get("name") and not ref.get("optional"):
                yield Ref(kind, ref["name"], ref.get("key"), f"{where}.env[{i}].valueFrom.{key}")
    for i, e in enumerate(c.get("envFrom") or []):
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            ref = e.get(key)
            if ref and ref.get("name") and not ref.get("optional"):
                yield Ref(kind, ref["name"], None, f"{where}.envFrom[{i}].{key}")


def _volume_refs(spec: Mapping[str, Any]) -> Iterator[Ref]:
    for i, v in enumerate(spec.get("volumes") or []):
        where = f"spec.template.spec.volumes[{i}]"
        sec, cm = v.get("secret") or {}, v.get("configMap") or {}
        if sec.get("secretName") and not sec.get("optional"):
            yield Ref("Secret", sec["secretName"], None, f"{where}.secret.secretName")
        if cm.get("name") and not cm.get("optional"):
            yield Ref("ConfigMap", cm["name"], None, f"{where}.configMap.name")
        for j, s in enumerate((v.get("projected") or {}).get("sources") or []):
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                ref = s.get(key)
                if ref and ref.get("name") and not ref.get("optional"):
                    yield Ref(kind, ref["name"], None, f"{where}.projected.sources[{j}].{key}.name")


def references(job: JobView) -> list[Ref]:
    """Every Secret/ConfigMap (and key) the job's pods need, with the field naming it."""
    spec = job.template.get("spec") or {}
    refs: list[Ref] = []
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            refs += _env_refs(c, f"spec.template.spec.{group}[{i}]")
    refs += _volume_refs(spec)
    secret = ((job.checkpoint or {}).get("credentialsSecretRef") or {}).get("name")
    if secret:
        refs += [Ref("Secret", secret, k, f"{CREDENTIALS}.name") for k in (E.S3_ACCESS_KEY, E.S3_SECRET_KEY)]
    return refs


def verdict(refs: list[Ref], found: Mapping[tuple[str, str], frozenset[str] | None]) -> Waiting | None:
    """``found[(kind, name)]``: the object's keys, or None if it does not exist (absent: could
    not be looked up). The first problem, in words a user acts on; None when all is there."""
    for r in refs:
        if (r.kind, r.name) not in found:
            continue
        keys = found[(r.kind, r.name)]
        reason = MISSING_SECRET if r.kind == "Secret" else MISSING_CONFIGMAP
        how = ("kubectl create secret generic" if r.kind == "Secret" else "kubectl create configmap")
        if keys is None:
            return Waiting(reason, f"{r.kind} {r.name!r} does not exist in the job's namespace ({r.field}): "
                                   f"create it ({how} {r.name} ...) or fix the reference; "
                                   "the workers start once it exists")
        if r.key is not None and r.key not in keys:
            return Waiting(reason, f"{r.kind} {r.name!r} has no key {r.key!r} ({r.field}): add the key or fix "
                                   "the reference; the workers start once it exists")
    return None


def bucket_verdict(uri: str, code: str, where: str, secret: str | None) -> Waiting | None:
    """The answer of a HEAD on the checkpoint bucket (``code``: "" when it exists)."""
    bucket = uri[len("s3://"):].split("/", 1)[0]
    if code in ("404", "NoSuchBucket", "NotFound"):
        return Waiting(BUCKET_MISSING, f"checkpoint bucket {bucket!r} does not exist at {where} "
                                       f"(spec.checkpoint.uri {uri}): create it or fix the URI")
    if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return Waiting(BUCKET_DENIED, f"checkpoint bucket {bucket!r} at {where} refuses the keys of Secret "
                                      f"{secret!r} ({code}): fix {E.S3_ACCESS_KEY}/{E.S3_SECRET_KEY} or the "
                                      "bucket's policy")
    return None
