"""The c10d rendezvous stores the operator hosts for its jobs.

The store speaks torch.distributed.TCPStore's protocol without torch (c10d_store.py). In the
locked mode (the default with heartbeats) each job has its own store on loopback behind the
gateway (rdzv_gateway.py); otherwise one shared store (torchrun's c10d backend prefixes every
key with `torch.rendezvous.<rdzv-id>`) listens on --rendezvous-port. Workers reach it at
--rendezvous-advertise-address, an IP literal (127.0.0.1 locally; the operator Service's
ClusterIP in a cluster), so no worker hosts it and nothing waits for DNS. See
operator/README-rendezvous.md.

The stores run in a child process (`python -m stoker.operator.rendezvous`), so a busy operator
never slows a rendezvous; the child asks the kernel to kill it when the operator dies
(PR_SET_PDEATHSIG), so a SIGKILLed operator leaves nothing behind.
If the store itself dies (killed, OOM), a watchdog thread starts it again on the same
port: the jobs whose rendezvous it broke restart (RendezvousLost) and need it back.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from stoker.common.parent_death import die_with_parent

from .c10d_store import StoreServer

log = logging.getLogger("stoker.operator.rendezvous")


def endpoint(advertise_address: str, port: int) -> str:
    """host:port for --rdzv-endpoint; IPv6 literals are bracketed."""
    if ":" in advertise_address and not advertise_address.startswith("["):
        return f"[{advertise_address}]:{port}"
    return f"{advertise_address}:{port}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class StoreProcess:
    """Starts the store child and waits until it accepts connections."""

    def __init__(self, port: int, bind_host: str = "0.0.0.0", per_job: bool = False) -> None:
        self.port = port
        self.bind_host = bind_host
        self.per_job = per_job           # the locked mode: per-job stores, asked for with ``request``
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._pipe = threading.Lock()

    def watch(self, interval_s: float = 0.5) -> threading.Thread:
        """Restart the store whenever it exits, until stop(); returns the thread."""
        def loop() -> None:
            while not self._stopping.wait(interval_s):
                if self.proc is not None and self.proc.poll() is not None and not self._stopping.is_set():
                    log.warning("rendezvous store exited; starting it again",
                                extra={"port": self.port, "returncode": self.proc.returncode})
                    self.restarts += 1
                    try:
                        self.start()
                    except RuntimeError:
                        log.exception("rendezvous store restart failed; trying again")

        t = threading.Thread(target=loop, name="rendezvous-watchdog", daemon=True)
        t.start()
        return t

    def start(self, timeout: float = 60.0) -> None:
        if self.per_job:
            self.proc = subprocess.Popen([sys.executable, "-m", "stoker.operator.rendezvous", "--per-job"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.request("PING", timeout)
            log.info("rendezvous stores ready (per job, behind the gateway)", extra={"pid": self.proc.pid})
            return
        probe = "127.0.0.1" if self.bind_host in ("0.0.0.0", "::") else self.bind_host
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stoker.operator.rendezvous", "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rendezvous store exited with {self.proc.returncode}: is port {self.port} free? "
                                   "(--rendezvous-port)")
            if port_open(probe, self.port):
                log.info("rendezvous store listening", extra={"port": self.port, "pid": self.proc.pid})
                return
            time.sleep(0.2)
        raise RuntimeError(f"rendezvous store did not listen on port {self.port} within {timeout:.0f}s")

    def request(self, line: str, timeout: float = 30.0) -> str:
        """One request to the per-job store process and its answer; ConnectionError when it is
        down (the watchdog starts it again)."""
        with self._pipe:
            proc = self.proc
            if proc is None or proc.poll() is not None or proc.stdin is None or proc.stdout is None:
                raise ConnectionError("the rendezvous store process is not running")
            try:
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], timeout)
                answer = proc.stdout.readline().decode().strip() if ready else ""
            except OSError as e:
                raise ConnectionError(f"the rendezvous store process: {e}") from None
            if not answer:
                raise ConnectionError(f"the rendezvous store process did not answer {line.split()[0]}")
            return answer

    def open(self, key: str) -> int:
        """The loopback port of ``key``'s store, made on first use."""
        verb, _, port = self.request(f"OPEN {key}").partition(" ")
        if verb != "PORT":
            raise ConnectionError(f"the rendezvous store process refused OPEN {key}: {verb} {port}")
        return int(port)

    def stop(self) -> None:
        self._stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(port: int) -> None:
    """Host the shared store until SIGTERM (runs in the child process; the unlocked mode)."""
    die_with_parent(signal.SIGTERM)
    parent = os.getppid()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await StoreServer.start(None, port)     # every address, IPv4 and IPv6, as torch's server
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await server.close()

    asyncio.run(run())


def serve_per_job(requests=sys.stdin, answers=sys.stdout) -> None:
    """The locked mode's store process: one loopback-only store per job, made on the
    gateway's first request for it. Requests, one line each: ``OPEN <ns>/<job>`` (answer
    ``PORT <n>``) and ``CLOSE <ns>/<job>`` (``OK``). Ends when the operator closes the pipe."""
    die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="c10d-stores", daemon=True).start()

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    stores: dict[str, StoreServer] = {}
    for line in requests:
        verb, _, key = line.strip().partition(" ")
        if verb == "OPEN":
            if key not in stores:
                stores[key] = call(StoreServer.start("127.0.0.1", 0))
            answers.write(f"PORT {stores[key].port}\n")
        elif verb == "PING":
            answers.write("PONG\n")
        elif verb == "CLOSE":
            if key in stores:
                call(stores.pop(key).close())
            answers.write("OK\n")
        else:
            answers.write(f"ERR unknown request {verb!r}\n")
        answers.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Stoker's shared c10d rendezvous store")
    ap.add_argument("--port", type=int, default=29400)
    ap.add_argument("--per-job", action="store_true",
                    help="the locked mode: per-job stores on loopback, asked for on stdin by the operator's gateway")
    args = ap.parse_args(argv)
    if args.per_job:
        serve_per_job()
    else:
        serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
