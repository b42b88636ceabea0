"""``nvidia.com/gpu`` device assignment, like the kubelet's device manager: a
container that asks for N GPUs gets N device ids of its own, exported as
CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES; containers that ask for none get
an empty list (they would see no GPU in a cluster either). Init containers may
reuse the ids of the pod's app containers. The ids are 0..--gpus-1 whether or
not such devices exist on this machine."""
from __future__ import annotations

GPU = "nvidia.com/gpu"


def container_gpus(container: dict) -> int:
    res = container.get("resources") or {}
    value = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0
    return int(str(value))


def plan(spec: dict) -> tuple[int, dict[str, list[int]]]:
    """(GPUs the pod needs, container -> positions in the pod's device list)."""
    out: dict[str, list[int]] = {}
    pos = 0
    for c in spec.get("containers") or []:
        n = container_gpus(c)
        out[c["name"]] = list(range(pos, pos + n))
        pos += n
    total = pos
    for c in spec.get("initContainers") or []:
        n = container_gpus(c)
        out[c["name"]] = list(range(n))
        total = max(total, n)
    return total, out


class GpuPool:
    def __init__(self, count: int) -> None:
        self.free = list(range(count))

    def take(self, n: int) -> list[int]:
        """Up to n free ids (fewer only if the scheduler over-committed us)."""
        got, self.free = self.free[:n], self.free[n:]
        return got

    def give_back(self, ids: list[int]) -> None:
        self.free = sorted(set(self.free) | set(ids))


def visible_devices(pod_ids: list[int], positions: list[int]) -> str:
    return ",".join(str(pod_ids[p]) for p in positions if p < len(pod_ids))
