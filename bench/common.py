"""Shared benchmark helpers: a results table with ratios, JSON with machine info,
and a throwaway MinIO server.

Every benchmark measures its baseline in the same run and reports ratios to it;
results go to ``bench/results/<name>.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

from stoker.devcluster.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info.update(code_version())
    return info


def code_version() -> dict[str, Any]:
    """The commit the code came from, and whether the tracked files differed from it."""
    out: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(ROOT)]
        out["git_commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True, timeout=5).stdout.strip()
        out["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                               capture_output=True, text=True, timeout=5).stdout.strip())
    return out


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def _cells(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None) -> tuple[list[str], list[list[str]]]:
    """The columns (default: the first row's keys) and each row's formatted cells."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return columns, [[fmt(r.get(c, "")) for c in columns] for r in rows]


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Print rows as an aligned table (columns default to the first row's keys)."""
    columns, cells = _cells(rows, columns)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
              for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min, max]`` of ``values`` (times ``scale``), or ``-`` when there are none."""
    if not values:
        return "-"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}, {max(v):.{digits}f}]"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The same rows as a Markdown table: what the README shows, checked against the
    results file by tests/test_readme.py."""
    columns, cells = _cells(rows, columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def write_results(name: str, results: dict[str, Any], directory: Path | None = None) -> Path:
    """Write ``bench/results/<name>.json`` (or ``directory/<name>.json``) with machine info
    (load average, commit), the command line and a timestamp."""
    if "note" in results:
        raise ValueError("results carry what the code measured; a 'note' is written by hand: say it in the README")
    payload = {"benchmark": name, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": [sys.executable, *sys.argv], "machine": machine_info(), **results}
    path = write_json((directory or RESULTS) / f"{name}.json", payload)
    print(f"wrote {path}", flush=True)
    return path


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def minio_binary() -> str:
    if os.environ.get("STOKER_MINIO"):
        return os.environ["STOKER_MINIO"]
    out = subprocess.run([str(ROOT / "devcluster/stoker/devcluster/build-tools.sh"), "minio"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("minio="):
            return line.split("=", 1)[1]
    raise RuntimeError(f"devcluster/stoker/devcluster/build-tools.sh minio printed no minio= line: {out!r}")


@contextlib.contextmanager
def minio_server() -> Iterator[dict[str, str]]:
    """A MinIO on a free loopback port in a temp dir; yields the S3 env variables.
    With AWS_ENDPOINT_URL_S3 already set, that server is used instead."""
    from stoker.common import env

    if os.environ.get(env.S3_ENDPOINT):
        yield {k: os.environ[k] for k in (env.S3_ENDPOINT, env.S3_ACCESS_KEY, env.S3_SECRET_KEY)
               if k in os.environ} | {env.S3_REGION: os.environ.get(env.S3_REGION, "us-east-1")}
        return
    data = Path(tempfile.mkdtemp(prefix="stoker-bench-minio-"))
    port = free_port()
    user, password = "bench-" + secrets.token_hex(4), secrets.token_urlsafe(18)
    proc = subprocess.Popen(
        [minio_binary(), "server", str(data / "data"), f"--address=127.0.0.1:{port}",
         f"--console-address=127.0.0.1:{free_port()}", "--quiet"],
        env={**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password, "HOME": str(data),
             "MINIO_BROWSER": "off"},
        stdout=subprocess.DEVNULL, stderr=open(data / "minio.log", "wb"))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/minio/health/ready", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"minio did not start; see {data / 'minio.log'}")
                time.sleep(0.2)
        yield {env.S3_ENDPOINT: url, env.S3_ACCESS_KEY: user, env.S3_SECRET_KEY: password,
               env.S3_REGION: "us-east-1"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)
