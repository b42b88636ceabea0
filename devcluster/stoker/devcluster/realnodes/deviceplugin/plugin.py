"""The fake GPU device plugin: serves DevicePlugin on a socket in the kubelet's
device-plugins directory and registers it with the kubelet (again whenever the kubelet
restarts and recreates its socket).

    python -m stoker.devcluster.realnodes.deviceplugin --dir D --count N [--node NAME]
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

from stoker.devcluster.realnodes.deviceplugin import api_pb2 as api
from stoker.devcluster.realnodes.deviceplugin import api_pb2_grpc as rpc

RESOURCE = "nvidia.com/gpu"
VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
ENDPOINT = "stoker-fake-gpu.sock"
VISIBLE_ENV = "NVIDIA_VISIBLE_DEVICES"

log = logging.getLogger("stoker.deviceplugin")


def device_ids(node: str, count: int) -> list[str]:
    return [f"{node}-gpu-{i}" for i in range(count)]


def allocate_response(request: api.AllocateRequest) -> api.AllocateResponse:
    """What a container given these devices sees: their ids in NVIDIA_VISIBLE_DEVICES, as
    the NVIDIA plugin's environment strategy does (pure)."""
    return api.AllocateResponse(container_responses=[
        api.ContainerAllocateResponse(envs={VISIBLE_ENV: ",".join(r.devices_ids)})
        for r in request.container_requests
    ])


class FakeGPUs(rpc.DevicePluginServicer):
    def __init__(self, ids: list[str], stop: threading.Event) -> None:
        self.ids, self.stop = ids, stop

    def GetDevicePluginOptions(self, request, context):
        return api.DevicePluginOptions()

    def ListAndWatch(self, request, context):
        yield api.ListAndWatchResponse(devices=[api.Device(ID=i, health="Healthy") for i in self.ids])
        while not self.stop.wait(1) and context.is_active():
            pass

    def GetPreferredAllocation(self, request, context):
        return api.PreferredAllocationResponse(container_responses=[
            api.ContainerPreferredAllocationResponse(
                deviceIDs=list(r.available_deviceIDs)[: r.allocation_size])
            for r in request.container_requests])

    def Allocate(self, request, context):
        log.info("allocate %s", [list(r.devices_ids) for r in request.container_requests])
        return allocate_response(request)

    def PreStartContainer(self, request, context):
        return api.PreStartContainerResponse()


def register(plugin_dir: Path) -> None:
    with grpc.insecure_channel(f"unix://{plugin_dir / KUBELET_SOCKET}") as ch:
        rpc.RegistrationStub(ch).Register(
            api.RegisterRequest(version=VERSION, endpoint=ENDPOINT, resource_name=RESOURCE,
                                options=api.DevicePluginOptions()), timeout=10)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def serve(plugin_dir: Path, node: str, count: int, stop: threading.Event) -> None:
    """Serve until ``stop``; (re-)register whenever the kubelet's socket is (re)created."""
    sock = plugin_dir / ENDPOINT
    kubelet_sock = plugin_dir / KUBELET_SOCKET
    registered_on = None
    server = None
    while not stop.is_set():
        current = _inode(kubelet_sock)
        if current and (current != registered_on or not sock.exists()):
            if server:
                server.stop(0)
            sock.unlink(missing_ok=True)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            rpc.add_DevicePluginServicer_to_server(FakeGPUs(device_ids(node, count), stop), server)
            server.add_insecure_port(f"unix://{sock}")
            server.start()
            try:
                register(plugin_dir)
                registered_on = current
                log.info("registered %d x %s with the kubelet (%s)", count, RESOURCE, kubelet_sock)
            except grpc.RpcError as exc:
                log.warning("registration failed, retrying: %s", exc)
        stop.wait(1)
    if server:
        server.stop(0)
    sock.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, type=Path, help="the kubelet's device-plugins directory")
    p.add_argument("--count", type=int, default=8, help="fake GPUs to advertise")
    p.add_argument("--node", default=os.uname().nodename, help="node name (prefix of device ids)")
    p.add_argument("--state", default="", help="ignored; marks the process as the cluster's")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(args.dir, args.node, args.count, stop)
    except KeyboardInterrupt:
        pass
    return 0
