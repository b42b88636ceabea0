"""Pure decisions: which folders retention deletes, which errors are retried."""
import pytest

from stoker.worker.checkpoint.retention import plan_deletions
from stoker.worker.checkpoint.retry import backoff_delays, call_with_retry, is_retryable


def test_keeps_newest_k_committed():
    assert plan_deletions([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], keep=2) == [1, 2, 3]


def test_partial_folders_older_than_newest_commit_are_garbage_newer_ones_stay():
    # 3 is a crashed save, 6 may be in flight right now
    assert plan_deletions([1, 2, 3, 4, 6], [1, 2, 4], keep=2) == [1, 3]


def test_never_deletes_the_newest_committed_and_nothing_without_commits():
    assert plan_deletions([7], [7], keep=1) == []
    assert plan_deletions([1, 2, 3], [], keep=1) == []
    with pytest.raises(ValueError, match="keep"):
        plan_deletions([1], [1], keep=0)


class FakeClientError(Exception):
    def __init__(self, code):
        self.response = {"Error": {"Code": code}}


def test_connection_and_server_errors_retry_client_errors_do_not():
    assert is_retryable(ConnectionError("refused"))
    assert is_retryable(FakeClientError("SlowDown"))
    assert is_retryable(FakeClientError("InternalError"))
    assert not is_retryable(FakeClientError("AccessDenied"))
    assert not is_retryable(FakeClientError("NoSuchBucket"))
    wrapped = RuntimeError("upload failed")
    wrapped.__cause__ = FakeClientError("InvalidAccessKeyId")
    assert not is_retryable(wrapped)
    assert not is_retryable(RuntimeError("Client error: NoSuchBucket: The specified bucket does not exist"))
    assert is_retryable(RuntimeError("Client error: Failed to connect: Connection refused"))
    # the CRT client's own words (s3torchconnectorclient 1.5, read from a MinIO)
    assert not is_retryable(RuntimeError("Service error: The key does not exist"))
    assert not is_retryable(RuntimeError("Service error: The bucket does not exist"))
    assert not is_retryable(RuntimeError("Client error: Forbidden: The request signature we calculated does not match"))
    assert is_retryable(RuntimeError("Client error: Unknown CRT error: CRT error 1047: aws-c-io: "
                                      "AWS_IO_SOCKET_CONNECTION_REFUSED, socket connection refused."))


def test_backoff_grows_and_caps():
    delays = backoff_delays(initial=0.25, factor=2, cap=1.0)
    assert [next(delays) for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_retry_succeeds_after_transient_failures_and_gives_up_at_deadline():
    t, calls = FakeTime(), []

    def flaky():
        calls.append(t.now)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert call_with_retry(flaky, what="x", timeout_s=10, clock=t.clock, sleep=t.sleep) == "ok"
    assert len(calls) == 3

    def down():
        raise ConnectionError("down")

    t2 = FakeTime()
    with pytest.raises(ConnectionError):
        call_with_retry(down, what="x", timeout_s=5, clock=t2.clock, sleep=t2.sleep)
    assert 5 <= t2.now < 6  # gave up at the deadline, not before, not much after

    t3, permanent_calls = FakeTime(), []

    def denied():
        permanent_calls.append(1)
        raise FakeClientError("AccessDenied")

    with pytest.raises(FakeClientError):
        call_with_retry(denied, what="x", timeout_s=60, clock=t3.clock, sleep=t3.sleep)
    assert len(permanent_calls) == 1
