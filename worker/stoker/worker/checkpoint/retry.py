"""Bounded retries with exponential backoff for storage calls."""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterator, TypeVar

log = logging.getLogger("stoker.worker.checkpoint")

T = TypeVar("T")

# S3 error codes that will not get better by waiting: fail fast with the cause.
_PERMANENT_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "InvalidBucketName", "AllAccessDisabled", "InvalidArgument", "InvalidRequest",
    "EntityTooLarge", "MethodNotAllowed", "NoSuchKey", "404", "403", "400",
}
# The same, as the CRT client (s3torchconnector) words them: it has no error codes.
CRT_NO_SUCH_KEY = "The key does not exist"
_PERMANENT_CRT_TEXT = (CRT_NO_SUCH_KEY, "The bucket does not exist", "Forbidden")


def backoff_delays(initial: float = 0.25, factor: float = 2.0, cap: float = 5.0) -> Iterator[float]:
    """0.25, 0.5, 1, 2, 4, 5, 5, ... (before jitter)."""
    delay = initial
    while True:
        yield delay
        delay = min(cap, delay * factor)


def _client_error_code(exc: BaseException) -> str | None:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", "")) or None
        cur = cur.__cause__ or cur.__context__
    return None


def is_retryable(exc: BaseException) -> bool:
    """Connection trouble and server-side errors are retried; a wrong bucket,
    wrong credentials or a missing key are not."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
        return False
    if isinstance(exc, FileNotFoundError):
        return False
    code = _client_error_code(exc)
    if code is not None:
        return code not in _PERMANENT_CODES
    # clients without structured errors (the CRT client) name the S3 code in the text
    text = str(exc)
    return not any(name in text for name in _PERMANENT_CODES if not name.isdigit()) and \
        not any(phrase in text for phrase in _PERMANENT_CRT_TEXT)


def crt_missing(exc: BaseException) -> bool:
    """The CRT client's error for a key that does not exist."""
    return CRT_NO_SUCH_KEY in str(exc)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, a non-retryable error occurs, or
    ``timeout_s`` has passed; then the last error is raised."""
    deadline = clock() + timeout_s
    attempt = 0
    for delay in backoff_delays():
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            left = deadline - clock()
            if not is_retryable(exc) or left <= 0:
                log.warning("storage.gave_up what=%s attempts=%d error=%r", what, attempt, exc)
                raise
            pause = min(left, delay * (0.5 + random.random()))
            log.info("storage.retry what=%s attempt=%d in_s=%.2f error=%r", what, attempt, pause, exc)
            sleep(pause)
    raise AssertionError("unreachable")
