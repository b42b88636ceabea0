"""Per-job token authentication for the heartbeat stream (torch-free).

The worker sends two metadata entries on the call:

    authorization: Bearer <token>        the job's token (from its Secret)
    x-stoker-job:  <namespace>/<name>    which job the token is for

The server looks the expected token up by job key and compares in constant
time. A message whose identity names another job is refused, so one job's
token cannot speak for another job.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

AUTH_HEADER = "authorization"
JOB_HEADER = "x-stoker-job"
BEARER = "Bearer "

TokenLookup = Callable[[str, str], "str | None"]
"""(namespace, job name) -> expected token, or None for an unknown job."""


class AuthError(Exception):
    """Raised with a message that is safe to return to the caller."""


@dataclass(frozen=True)
class JobKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, value: str) -> "JobKey":
        namespace, sep, name = value.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise AuthError(f"{JOB_HEADER} must be '<namespace>/<job name>', got {value!r}")
        return cls(namespace, name)


def new_token() -> str:
    """A fresh random job token (for the job's Secret)."""
    return secrets.token_urlsafe(32)


def derive_token(key: str, namespace: str, job_name: str) -> str:
    """The job's token derived from an install-wide key: a party holding the key (the
    separate rendezvous store of a chart install) checks any job's token without reading its
    Secret, and without the key nobody can make one. A job recreated under the same name gets
    the same token; its old pods went with the old job."""
    mac = hmac.new(key.encode(), f"stoker-job-token/v1\0{namespace}/{job_name}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def key_id(key: str) -> str:
    """A short public name of a key (names the Secrets of tokens derived from it)."""
    return hashlib.sha256(b"stoker-key-id\0" + key.encode()).hexdigest()[:8]


def derived_lookup(key: str) -> TokenLookup:
    """TokenLookup for ``derive_token``: every job has one (which jobs exist is not known here)."""
    if len(key) < 32:
        raise ValueError("the rendezvous key must be at least 32 characters")
    return lambda namespace, job_name: derive_token(key, namespace, job_name)


def client_metadata(namespace: str, job_name: str, token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, BEARER + token), (JOB_HEADER, f"{namespace}/{job_name}"))


def authenticate(metadata: Iterable[tuple[str, str]] | Mapping[str, str], lookup: TokenLookup) -> JobKey:
    """Return the job the call is authenticated for, or raise AuthError."""
    md = dict(metadata.items() if isinstance(metadata, Mapping) else metadata)
    raw_job = md.get(JOB_HEADER)
    raw_auth = md.get(AUTH_HEADER)
    if not raw_job:
        raise AuthError(f"missing {JOB_HEADER} metadata ('<namespace>/<job name>')")
    if not raw_auth or not raw_auth.startswith(BEARER):
        raise AuthError(f"missing {AUTH_HEADER} metadata ('Bearer <job token>')")
    job = JobKey.parse(raw_job)
    presented = raw_auth[len(BEARER):].strip()
    expected = lookup(job.namespace, job.name)
    # compare even for unknown jobs so timing does not reveal which jobs exist
    ok = hmac.compare_digest(presented.encode(), (expected or secrets.token_urlsafe(32)).encode())
    if expected is None or not expected or not ok:
        raise AuthError(f"invalid token for job {job}")
    return job


def identity_matches(job: JobKey, namespace: str, job_name: str) -> bool:
    return job.namespace == namespace and job.name == job_name
