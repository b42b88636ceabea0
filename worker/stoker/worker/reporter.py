"""The worker's end of the heartbeat stream: a background thread that keeps one
bidirectional gRPC stream open to the operator, sends the session's latest
state every interval (or at once when woken), hands received commands to the
session, and reconnects with backoff. It never blocks or fails the caller."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator

import grpc

from stoker.common.auth import client_metadata
from stoker.common.proto import stoker_pb2 as pb
from stoker.common.proto import stoker_pb2_grpc as pb_grpc

log = logging.getLogger("stoker.worker.sdk")

_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.enable_retries", 0),
]


def reconnect_delays(initial: float = 0.2, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(cap, delay * factor)


class Reporter:
    """Knows nothing of the session: ``build_message(seq)`` gives the next message to
    send, ``on_command`` takes what the operator sends back."""

    def __init__(self, identity: pb.JobIdentity, address: str, token: str, interval_s: float,
                 build_message: Callable[[int], pb.WorkerMessage],
                 on_command: Callable[[pb.OperatorCommand], None]):
        self.build_message = build_message
        self.address = address
        self.interval_s = interval_s
        self.on_command = on_command
        self._metadata = client_metadata(identity.namespace, identity.job_name, token)
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stoker-heartbeat", daemon=True)
        self.messages_sent = 0
        self.connects = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 3.0) -> None:
        """Send a last message (if connected) and stop; waits at most ``timeout``."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)

    def _outgoing(self, call_done: threading.Event) -> Iterator[pb.WorkerMessage]:
        seq = 0
        while not call_done.is_set():
            seq += 1
            yield self.build_message(seq)
            self.messages_sent += 1
            if self._closing.is_set():
                return
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _run(self) -> None:
        delays = reconnect_delays()
        failures = 0
        while not self._closing.is_set():
            call_done = threading.Event()
            started = time.monotonic()
            channel = grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
            try:
                stub = pb_grpc.HeartbeatStub(channel)
                responses = stub.Stream(self._outgoing(call_done), metadata=self._metadata)
                self.connects += 1
                for command in responses:
                    self.on_command(command)
                if not self._closing.is_set():
                    log.info("sdk.stream_ended address=%s (server closed it); reconnecting", self.address)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                self.last_error = f"{code}: {exc.details() if hasattr(exc, 'details') else exc}"
                failures += 1
                level = logging.ERROR if code in (grpc.StatusCode.UNAUTHENTICATED,
                                                  grpc.StatusCode.PERMISSION_DENIED) else logging.WARNING
                if failures == 1 or failures % 20 == 0 or level == logging.ERROR:
                    log.log(level, "sdk.stream_failed address=%s failures=%d error=%s",
                            self.address, failures, self.last_error)
            except Exception as exc:  # noqa: BLE001 - never let reporting kill training
                self.last_error = repr(exc)
                failures += 1
                log.exception("sdk.stream_crashed address=%s", self.address)
            finally:
                call_done.set()
                self._wake.set()  # release the generator so gRPC's sender thread exits
                channel.close()
            if time.monotonic() - started > 2 * self.interval_s + 1:
                delays = reconnect_delays()  # it was a healthy stream: start backoff afresh
                failures = 0
            self._closing.wait(next(delays))
