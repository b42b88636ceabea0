"""Pure container-environment logic, following the kubelet:

* ``expand`` is Kubernetes' ``$(VAR)`` expansion (``$$`` escapes, unknown
  references stay literal), used for ``env[].value``, ``command`` and ``args``.
* ``container_env`` builds the env list in the kubelet's order: ``envFrom``
  first, then ``env`` entries in order (later ones win; a ``value`` may refer to
  variables defined before it).

Lookups of Secrets/ConfigMaps are injected as functions so this stays pure."""
from __future__ import annotations

import base64
import math
import re
from decimal import Decimal
from typing import Callable

from kubernetes.utils.quantity import parse_quantity


class EnvError(Exception):
    """The container cannot start (kubelet: CreateContainerConfigError)."""


def expand(text: str, env: dict[str, str]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1:]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


_LABEL_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: dict, path: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
    }
    if path in simple:
        return simple[path] or ""
    m = _LABEL_RE.match(path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        d = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
    raise EnvError(f"fieldRef.fieldPath {path!r} is not supported by the process node agent")


def resource_field_ref(container: dict, ref: dict, node_allocatable: dict) -> str:
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise EnvError(f"resourceFieldRef.resource {resource!r} is not supported")
    res = (container.get("resources") or {})
    value = (res.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (res.get("limits") or {}).get(name)  # defaulted like the apiserver does
    if value is None:
        value = node_allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = ref.get("divisor") or "1"
    if str(divisor) in ("0", ""):
        divisor = "1"
    q = Decimal(parse_quantity(value)) / Decimal(parse_quantity(divisor))
    return str(max(math.ceil(q), 1 if name == "cpu" and q > 0 else 0))


Lookup = Callable[[str, str], "dict | None"]  # (namespace, name) -> object or None


def _configmap_data(cm: dict) -> dict[str, str]:
    out = dict(cm.get("data") or {})
    for k, v in (cm.get("binaryData") or {}).items():
        out[k] = base64.b64decode(v).decode("utf-8", "replace")
    return out


def _secret_data(secret: dict) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode("utf-8", "replace")
           for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


_ENV_NAME_RE = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def container_env(pod: dict, container: dict, *, get_secret: Lookup,
                  get_configmap: Lookup, node_allocatable: dict | None = None,
                  base: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment (declared variables on top of ``base``)."""
    ns = (pod.get("metadata") or {}).get("namespace", "default")
    env: dict[str, str] = dict(base or {})
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref, what, get, data_of = src["configMapRef"], "ConfigMap", get_configmap, _configmap_data
        elif "secretRef" in src:
            ref, what, get, data_of = src["secretRef"], "Secret", get_secret, _secret_data
        else:
            continue
        obj = get(ns, ref.get("name", ""))
        if obj is None:
            if ref.get("optional"):
                continue
            raise EnvError(f'{what.lower()} "{ref.get("name")}" not found '
                           f"(envFrom of container {container.get('name')!r}; create it or set optional: true)")
        for k, v in data_of(obj).items():
            if _ENV_NAME_RE.match(prefix + k):
                env[prefix + k] = v
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_field_ref(container, vf["resourceFieldRef"], node_allocatable or {})
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            is_secret = "secretKeyRef" in vf
            ref = vf["secretKeyRef" if is_secret else "configMapKeyRef"]
            what = "secret" if is_secret else "configmap"
            obj = (get_secret if is_secret else get_configmap)(ns, ref.get("name", ""))
            data = None if obj is None else (_secret_data(obj) if is_secret else _configmap_data(obj))
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                missing = (f'{what} "{ref.get("name")}" not found' if data is None
                           else f'key "{ref.get("key")}" not found in {what} "{ref.get("name")}"')
                raise EnvError(f"{missing} (env {name!r} of container {container.get('name')!r}; "
                               "create it or set optional: true)")
            env[name] = data[ref["key"]]
        else:
            raise EnvError(f"env {name!r}: unsupported valueFrom {sorted(vf)}")
    return env


def command_line(container: dict, env: dict[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded. Images are ignored, so a
    container without ``command`` cannot run here."""
    command = container.get("command") or []
    if not command:
        raise EnvError(f"container {container.get('name')!r} has no command: the process node agent "
                       "ignores images, so set command (and args) explicitly")
    return [expand(a, env) for a in list(command) + list(container.get("args") or [])]
