"""Cluster DNS names for pod processes, computed from Services and
EndpointSlices (pure), and published as one JSON file the pod-side shim reads.

What resolves (cluster domain ``cluster.local``):

* ``<svc>.<ns>.svc.cluster.local`` (and, through the search list a pod in
  ``<ns>`` gets, ``<svc>.<ns>.svc``, ``<svc>.<ns>``, ``<svc>``):
  - Services with a selector: the IPs of the pods it selects that are Ready
    (all running ones with ``publishNotReadyAddresses``), computed here from
    the pods themselves. EndpointSlices cannot be used for them: the apiserver
    rejects loopback endpoint addresses ("may not be in the loopback range"),
    so the endpointslice controller leaves those slices empty (and logs
    FailedToUpdateEndpointSlices events).
  - Services without a selector: the ready addresses of their EndpointSlices.
  - Headless and ClusterIP Services alike resolve to pod IPs, because there
    is no kube-proxy to make a ClusterIP reachable. Consequence: connect to the
    container port (``targetPort``); a Service ``port`` that differs from its
    ``targetPort`` does not work here.
  - ExternalName Services: resolved as their ``externalName`` (a CNAME).
* ``<hostname>.<svc>.<ns>.svc.cluster.local`` for pods with ``spec.hostname``
  and ``spec.subdomain`` = ``<svc>`` (as for a headless Service).
* The pod's own hostname resolves to its pod IP (done by the shim).
"""
from __future__ import annotations

import json
import os

DOMAIN = "cluster.local"


def _ready(endpoint: dict) -> bool:
    ready = (endpoint.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)


def slim_pod(pod: dict) -> dict:
    """Only what build_hosts reads (agents keep every pod of the cluster)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels", "deletionTimestamp") if k in meta},
        "spec": {k: spec[k] for k in ("hostname", "subdomain") if k in spec},
        "status": {"podIP": status.get("podIP"), "phase": status.get("phase"),
                   "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]},
    }


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def build_hosts(services: list[dict], pods: list[dict], slices: list[dict]) -> dict[str, list[str] | str]:
    """name -> list of IPs, or a string (a CNAME target) for ExternalName."""
    pods_by_ns: dict[str, list[dict]] = {}
    for p in pods:
        status = p.get("status") or {}
        if status.get("podIP") and status.get("phase") not in ("Succeeded", "Failed"):
            pods_by_ns.setdefault((p.get("metadata") or {}).get("namespace", ""), []).append(p)
    slices_by_service: dict[tuple[str, str], list[dict]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if svc and s.get("addressType", "IPv4") == "IPv4":
            slices_by_service.setdefault((meta.get("namespace", ""), svc), []).append(s)
    hosts: dict[str, list[str] | str] = {}
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        fqdn = f"{name}.{ns}.svc.{DOMAIN}".lower()
        if spec.get("type") == "ExternalName":
            if spec.get("externalName"):
                hosts[fqdn] = spec["externalName"].rstrip(".").lower()
            continue
        all_addresses = bool(spec.get("publishNotReadyAddresses"))
        ips: set[str] = set()
        selector = spec.get("selector") or {}
        if selector:
            for p in pods_by_ns.get(ns, []):
                pm, ps = p.get("metadata") or {}, p.get("spec") or {}
                if not _selects(selector, pm.get("labels") or {}):
                    continue
                if not (all_addresses or (_pod_ready(p) and not pm.get("deletionTimestamp"))):
                    continue
                ip = p["status"]["podIP"]
                ips.add(ip)
                if ps.get("hostname") and ps.get("subdomain") == name:
                    hosts[f"{ps['hostname']}.{fqdn}".lower()] = [ip]
        else:
            for sl in slices_by_service.get((ns, name), []):
                for ep in sl.get("endpoints") or []:
                    if not (all_addresses or _ready(ep)):
                        continue
                    ips.update(ep.get("addresses") or [])
                    if ep.get("hostname") and ep.get("addresses"):
                        hosts[f"{ep['hostname']}.{fqdn}".lower()] = list(ep["addresses"])
        hosts[fqdn] = sorted(ips)
    return hosts


def search_list(namespace: str) -> list[str]:
    return [f"{namespace}.svc.{DOMAIN}", f"svc.{DOMAIN}", DOMAIN]


def hosts_file_text(hosts: dict) -> str:
    """The same map for the C shim: "ip name" lines; "- name" for a cluster name
    without addresses (answered NXDOMAIN). ExternalName entries are left out."""
    lines = []
    for name in sorted(hosts):
        value = hosts[name]
        if isinstance(value, str):
            continue
        if value:
            lines.extend(f"{ip} {name}" for ip in value)
        else:
            lines.append(f"- {name}")
    return "".join(line + "\n" for line in lines)


def write_text(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_hosts(path: str, hosts: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(hosts, f, sort_keys=True)
    os.replace(tmp, path)
