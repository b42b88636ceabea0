"""Structured JSON logs: one object per line, with the job's fields when known."""
from __future__ import annotations

import datetime as dt
import json
import logging

_STD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None))):
                out[k] = v
        ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers
        if isinstance(ref, dict):
            out.setdefault("namespace", ref.get("namespace"))
            out.setdefault("object", f"{ref.get('kind', '')}/{ref.get('name', '')}")
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers[:] = []
    h = logging.StreamHandler()
    h.setFormatter(JsonFormatter())
    root.addHandler(h)
    root.setLevel(level.upper())
    for noisy in ("kubernetes", "urllib3", "aiohttp", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
