"""The shared c10d rendezvous store the operator hosts for every job.

One `torch.distributed.TCPStore` server (multi-tenant: torchrun's c10d backend
prefixes every key with `torch.rendezvous.<rdzv-id>`) listens on
--rendezvous-port. Workers reach it at --rendezvous-advertise-address, an IP
literal (127.0.0.1 locally; the operator Service's ClusterIP in a cluster), so
no worker hosts it and nothing waits for DNS. See operator/README-rendezvous.md.

The store runs in a child process (`python -m stoker.operator.rendezvous`) so the
operator itself never imports torch; the child asks the kernel to kill it when
the operator dies (PR_SET_PDEATHSIG), so a SIGKILLed operator leaves nothing behind.
If the store itself dies (killed, OOM), a watchdog thread starts it again on the same
port: the jobs whose rendezvous it broke restart (RendezvousLost) and need it back.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger("stoker.operator.rendezvous")

PR_SET_PDEATHSIG = 1


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


NO_TORCH = ("the rendezvous store (--rendezvous-port {port}) is torch.distributed.TCPStore and torch is not "
            "installed here: pip install 'stoker[operator,rendezvous]' (CPU wheels suffice), or run the store "
            "apart (`stoker operator rendezvous` where torch is installed, e.g. the worker image) and start the "
            "operator with --rendezvous-port 0 and --rendezvous-advertise-address <the store's IP>")


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def require_torch(port: int = 29400) -> None:
    if not torch_installed():
        raise RuntimeError(NO_TORCH.format(port=port))


class StoreProcess:
    """Starts the store child and waits until it accepts connections."""

    def __init__(self, port: int, bind_host: str = "0.0.0.0") -> None:
        self.port = port
        self.bind_host = bind_host
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()

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
        require_torch(self.port)
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

    def stop(self) -> None:
        self._stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def serve(port: int) -> None:
    """Host the store until SIGTERM (runs in the child process)."""
    _die_with_parent()
    parent = os.getppid()
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore("0.0.0.0", port, is_master=True, multi_tenant=True,
                     wait_for_workers=False, timeout=timedelta(seconds=60))
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    while not stop["flag"] and os.getppid() == parent:
        time.sleep(0.5)
    del store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Stoker's shared c10d rendezvous store")
    ap.add_argument("--port", type=int, default=29400)
    args = ap.parse_args(argv)
    try:
        require_torch(args.port)
    except RuntimeError as e:
        print(f"stoker operator rendezvous: {e}", file=sys.stderr)
        return 1
    serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
