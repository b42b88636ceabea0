"""RFC 3339 timestamps as Kubernetes writes them: the one parser and formatter that the
operator, the CLI and status fields share. Torch-free."""
from __future__ import annotations

import datetime as dt


def fmt_time(t: dt.datetime) -> str:
    """UTC, whole seconds: 2026-01-01T12:00:00Z (status fields, incidents)."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """An aware datetime from RFC 3339 (a naive one is taken as UTC); None if empty or unreadable."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
