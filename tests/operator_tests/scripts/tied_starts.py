"""Start /bin/true N times the way the launcher starts trainers (tie_workers: Popen with a
preexec_fn) while this process holds a live gRPC channel, as the launcher does; print the
exit codes that were not 0. ``launcher``: set up gRPC as launch.main does; ``default``: as before."""
import json
import sys
import threading

from stoker.operator import launch

mode, n = sys.argv[1], int(sys.argv[2])
if mode == "launcher":
    launch.no_grpc_fork_handlers()
import grpc  # noqa: E402 (after the setting, as in launch.main)

channel = grpc.insecure_channel("127.0.0.1:1")   # nothing listens: gRPC's poller keeps working
done = threading.Event()


def poke() -> None:
    while not done.is_set():
        try:
            grpc.channel_ready_future(channel).result(timeout=0.05)
        except grpc.FutureTimeoutError:
            pass


threading.Thread(target=poke, daemon=True).start()
assert launch.tie_workers()
from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler  # noqa: E402

bad = [rc for rc in (subprocess_handler.Popen(["/bin/true"]).wait() for _ in range(n)) if rc != 0]
done.set()
print(json.dumps({"starts": n, "bad": bad}), flush=True)

