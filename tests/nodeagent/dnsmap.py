"""Cluster DNS names for pod processes, computed from Services and
EndpointSlices (pure), and published as one JSON file the pod-side shim reads.

What resolves (cluster domain ``cluster.local``):

* ``<svc>.<ns>.svc.cluster.local`` (and, through the search list a pod in
  ``<ns>`` gets, ``<svc>.<ns>.svc``, ``<svc>.<ns>``, ``<svc>``):
  - headless Services: the ready endpoint addresses (all addresses with
    ``publishNotReadyAddresses``), as cluster DNS does;
  - ClusterIP Services: also the ready endpoint *pod* IPs, because there is no
    kube-proxy to make the ClusterIP reachable. Consequence: connect to the
    container port (``targetPort``); a Service ``port`` that differs from its
    ``targetPort`` does not work here;
  - ExternalName Services: resolved as their ``externalName`` (a CNAME).
* ``<hostname>.<svc>.<ns>.svc.cluster.local`` for endpoints that carry a
  hostname (pods with ``spec.hostname`` + ``spec.subdomain`` = a headless
  Service's name).
* The pod's own hostname resolves to its pod IP (done by the shim).
"""
from __future__ import annotations

import json
import os

DOMAIN = "cluster.local"


def _ready(endpoint: dict) -> bool:
    ready = (endpoint.get("conditions") or {}).get("ready")
    return ready is None or bool(ready)


def build_hosts(services: list[dict], slices: list[dict]) -> dict[str, list[str] | str]:
    """name -> list of IPs, or a string (a CNAME target) for ExternalName."""
    by_service: dict[tuple[str, str], list[dict]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        svc = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if svc and s.get("addressType", "IPv4") == "IPv4":
            by_service.setdefault((meta.get("namespace", ""), svc), []).append(s)
    hosts: dict[str, list[str] | str] = {}
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        fqdn = f"{name}.{ns}.svc.{DOMAIN}"
        if spec.get("type") == "ExternalName":
            if spec.get("externalName"):
                hosts[fqdn] = spec["externalName"].rstrip(".").lower()
            continue
        all_addresses = bool(spec.get("publishNotReadyAddresses"))
        ips: list[str] = []
        for sl in by_service.get((ns, name), []):
            for ep in sl.get("endpoints") or []:
                if not (all_addresses or _ready(ep)):
                    continue
                for ip in ep.get("addresses") or []:
                    if ip not in ips:
                        ips.append(ip)
                if ep.get("hostname") and ep.get("addresses"):
                    hosts[f"{ep['hostname']}.{fqdn}".lower()] = list(ep["addresses"])
        hosts[fqdn.lower()] = sorted(ips)
    return hosts


def search_list(namespace: str) -> list[str]:
    return [f"{namespace}.svc.{DOMAIN}", f"svc.{DOMAIN}", DOMAIN]


def write_hosts(path: str, hosts: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(hosts, f, sort_keys=True)
    os.replace(tmp, path)
