"""What real nodes could leave behind on the host, captured so a test can compare the host
before `up` and after `down`."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from stoker.devcluster.realnodes.layout import KUBELET_KERNEL_TUNABLES

# The kubelet's tunables plus a few settings kube-proxy and CNI plugins touch when they run
# in the host's namespaces.
SYSCTLS = [*KUBELET_KERNEL_TUNABLES, "net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
           "net/bridge/bridge-nf-call-iptables", "net/netfilter/nf_conntrack_max"]


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout


def sysctls() -> dict[str, str]:
    found = {}
    for name in SYSCTLS:
        try:
            found[name] = Path(f"/proc/sys/{name}").read_text().strip()
        except OSError:
            pass
    return found


def links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in _out("ip", "-o", "link").splitlines()}


def iptables() -> str:
    """The host's rules without packet counters."""
    return re.sub(r"\[\d+:\d+\]", "", "\n".join(
        line for line in _out("iptables-save").splitlines() if not line.startswith("#")))


def snapshot() -> dict:
    return {
        "sysctls": sysctls(),
        "netns": set(_out("ip", "netns", "list").split()),
        "links": links(),
        "routes": _out("ip", "route"),
        "addresses": _out("ip", "-o", "addr"),
        "iptables": iptables(),
        "mounts": {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()},
        "cgroups": {str(p) for p in Path("/sys/fs/cgroup").glob("*/stoker-*")},
    }


def differences(before: dict, after: dict) -> dict:
    """Per aspect, what changed (empty when the host is as it was)."""
    diff = {}
    for key in before:
        b, a = before[key], after[key]
        if b == a:
            continue
        if isinstance(b, set):
            diff[key] = {"added": sorted(a - b), "removed": sorted(b - a)}
        elif isinstance(b, dict):
            diff[key] = {k: (b.get(k), a.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        else:
            diff[key] = {"before": b, "after": a}
    return diff
