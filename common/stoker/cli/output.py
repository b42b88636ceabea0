"""Pure presentation helpers of the on-call CLI: aligned tables, ages, colour
(only on a TTY, never with NO_COLOR), JSON/YAML dumps. No I/O besides the
stream handed in."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
from typing import Any, Iterable, Sequence, TextIO

from stoker.common.timefmt import parse_time

FORMATS = ("table", "json", "yaml")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COLOURS = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "grey": "90", "bold": "1"}

# Phase / health / check status -> colour name.
STATE_COLOURS = {
    "Running": "green", "Succeeded": "green", "OK": "green", "PASS": "green", "Ready": "green",
    "Created": "yellow", "Restarting": "yellow", "Suspended": "grey", "Pending": "yellow",
    "RECOVERING": "yellow", "DEGRADED": "yellow", "STALLED": "yellow", "PENDING": "yellow", "WAITING": "yellow", "SKIP": "grey",
    "SUSPENDED": "grey", "DONE": "green",
    "Failed": "red", "FAILED": "red", "FAIL": "red", "Unknown": "red", "NotReady": "red",
}


def use_colour(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """Colour only when writing to a terminal, and never when NO_COLOR is set
    (https://no-color.org: any value) or TERM=dumb."""
    env = os.environ if env is None else env
    if "NO_COLOR" in env or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, colour: str | None, enabled: bool) -> str:
    if not enabled or not colour or colour not in _COLOURS or not text:
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


def paint_state(text: str, enabled: bool) -> str:
    return paint(text, STATE_COLOURS.get(text), enabled)


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, gap: int = 3) -> str:
    """kubectl-style table: upper-case headers, columns left-aligned and padded
    to the widest cell (ANSI colour codes do not count), no trailing spaces."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(visible_len(r[i]) for r in cells if i < len(r)) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            last = i == len(r) - 1
            parts.append(c if last else c + " " * (widths[i] - visible_len(c) + gap))
        lines.append("".join(parts).rstrip())
    return "\n".join(lines)


def key_values(pairs: Iterable[tuple[str, Any]], indent: int = 0) -> str:
    """'Key:   value' lines aligned on the value (describe style)."""
    pairs = [(k, "" if v is None else str(v)) for k, v in pairs]
    if not pairs:
        return ""
    w = max(len(k) for k, _ in pairs) + 2
    return "\n".join(" " * indent + f"{k + ':':<{w}}{v}".rstrip() for k, v in pairs)


def human_duration(seconds: float | None) -> str:
    """kubectl's short ages: 45s, 5m30s (< 10 min), 3h20m (< 8 h), 2d4h, 30d, '<unknown>'."""
    if seconds is None:
        return "<unknown>"
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    m, h, d = s // 60, s // 3600, s // 86400
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"


def age_seconds(value: str | None, now: dt.datetime) -> float | None:
    t = parse_time(value)
    return None if t is None else max(0.0, (now - t).total_seconds())


def human_rate(value: float | None) -> str:
    """Tokens per second: 950, 12.3k, 4.56M."""
    if value is None:
        return "-"
    v = float(value)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            x = v / div
            return f"{x:.3g}{suffix}" if x < 100 else f"{x:.0f}{suffix}"
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.2g}"


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def dumps(obj: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=2, sort_keys=False, default=str)
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False).rstrip("\n")
    raise ValueError(f"unknown output format {fmt!r} (use one of {', '.join(FORMATS)})")
