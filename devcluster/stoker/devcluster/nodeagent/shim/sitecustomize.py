"""Cluster DNS for Python processes run by the stoker process node agent
(devcluster/stoker/devcluster/nodeagent). The agent puts this directory first on PYTHONPATH.

It wraps socket.getaddrinfo / gethostbyname / gethostbyname_ex so cluster names
resolve from the JSON map the agent keeps up to date (env
STOKER_NODEAGENT_HOSTS), with the pod namespace's search list (ndots:5 like
cluster DNS), and makes socket.gethostname() return the pod's hostname, which
resolves to the pod IP. Names not in the map fall through to the real resolver.
C/C++ code is covered by the LD_PRELOAD shim (stokerdns.c) where the agent
could build it. A sitecustomize this one shadows still runs afterwards."""
import json as _json
import os as _os
import socket as _socket


def _install():
    path = _os.environ.get("STOKER_NODEAGENT_HOSTS")
    if not path:
        return
    namespace = _os.environ.get("STOKER_NODEAGENT_NAMESPACE", "default")
    own_name = _os.environ.get("STOKER_NODEAGENT_HOSTNAME", "")
    own_ip = _os.environ.get("STOKER_NODEAGENT_POD_IP", "")
    domain = "cluster.local"
    search = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
    cache = {"mtime": None, "hosts": {}}

    def hosts():
        try:
            mtime = _os.stat(path).st_mtime_ns
        except OSError:
            return cache["hosts"]
        if mtime != cache["mtime"]:
            try:
                with open(path) as f:
                    cache["hosts"] = _json.load(f)
                cache["mtime"] = mtime
            except (OSError, ValueError):
                pass
        return cache["hosts"]

    def lookup(name, depth=0):
        """IPs for a cluster name, [] for a cluster name without endpoints,
        None for a name this map does not know (use the real resolver)."""
        if not isinstance(name, str) or not name or depth > 4:
            return None
        n = name.rstrip(".").lower()
        if own_name and own_ip and n in (own_name.lower(), f"{own_name.lower()}.{search[0]}"):
            return [own_ip]
        table = hosts()
        candidates = [n] if name.endswith(".") or n.count(".") >= 5 else [f"{n}.{s}" for s in search] + [n]
        for c in candidates:
            if c in table:
                v = table[c]
                if isinstance(v, str):  # ExternalName
                    return lookup(v, depth + 1) or _real_ips(v)
                return list(v)
        if n.endswith("." + domain):
            return []
        return None

    orig_getaddrinfo = _socket.getaddrinfo
    orig_gethostbyname = _socket.gethostbyname
    orig_gethostbyname_ex = _socket.gethostbyname_ex

    def _real_ips(name):
        try:
            return [orig_gethostbyname(name)]
        except OSError:
            return []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        ips = lookup(host.decode() if isinstance(host, bytes) else host)
        if ips is None:
            return orig_getaddrinfo(host, port, family, type, proto, flags)
        if not ips or family == _socket.AF_INET6:
            raise _socket.gaierror(_socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in ips:
            out.extend(orig_getaddrinfo(ip, port, family, type, proto, flags | _socket.AI_NUMERICHOST))
        return out

    def known(name):
        """The cluster name's IPs; None: not a cluster name (ask the system)."""
        ips = lookup(name)
        if ips is not None and not ips:
            raise _socket.gaierror(_socket.EAI_NONAME, "Name or service not known")
        return ips

    def gethostbyname(name):
        ips = known(name)
        return orig_gethostbyname(name) if ips is None else ips[0]

    def gethostbyname_ex(name):
        ips = known(name)
        return orig_gethostbyname_ex(name) if ips is None else (name.rstrip("."), [], ips)

    _socket.getaddrinfo = getaddrinfo
    _socket.gethostbyname = gethostbyname
    _socket.gethostbyname_ex = gethostbyname_ex
    if own_name:
        _socket.gethostname = lambda: own_name


def _chain():
    """Run the sitecustomize this one shadows, if any (e.g. a venv's)."""
    import importlib.machinery
    import importlib.util
    import sys
    here = _os.path.dirname(_os.path.abspath(__file__))
    path = [p for p in sys.path if _os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec and spec.loader:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


try:
    _install()
except Exception:  # never break the pod's program because of the shim
    pass
_chain()
