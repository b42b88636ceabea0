"""Entry point: ``python -m stoker.worker.train CONFIG`` (under torchrun for >1 process).

Logging -> config -> build -> ``trainer.run()``. If the checkpoint location holds a
committed checkpoint, training resumes from it (this is how Stoker recovers a job).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from stoker.worker import config as config_mod
from stoker.worker.process_exit import exit_process

# What main() imports late, imported ahead by a warm process of the launcher (stoker.operator.launch_warm):
# the trainer, and what its start and restore import (the SDK, the checkpoint tiers, boto3: 0.4 s idle), and
# torch._inductor.config, which torch.use_deterministic_algorithms imports (1.5 s idle; py-spy on real nodes:
# 1.7-1.8 s of a 4.5 s restart in place). About 100 MB more per warm process.
__stoker_warm__ = ("stoker.worker.trainer", "stoker.worker.health_guard", "stoker.worker.sdk", "stoker.worker.reporter",
                   "stoker.worker.checkpoint.manager", "stoker.worker.checkpoint.s3", "stoker.worker.checkpoint.memory",
                   "stoker.worker.checkpoint.memory_peer", "torch._inductor.config")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with this process's rank."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
               "level": record.levelname.lower(), "logger": record.name, "rank": self.rank,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(int(os.environ.get("RANK", "0"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("STOKER_LOG_LEVEL", "INFO").upper())


@record
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stoker.worker.train", description=__doc__)
    parser.add_argument("config", nargs="?", help="YAML or JSON trainer config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one config field, e.g. --set parallel.mode=zero3 (repeatable)")
    parser.add_argument("--steps", type=int, help="shorthand for --set train.steps=N")
    parser.add_argument("--model", help="shorthand for --set model.size=SIZE (a 'gpt-' prefix is accepted)")
    args = parser.parse_args(argv)
    _setup_logging()
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.model:
        overrides.append(f"model.size={args.model.removeprefix('gpt-')}")
    try:
        cfg = config_mod.load(args.config, overrides=overrides)
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from stoker.worker.trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except config_mod.ConfigError as exc:  # world-size / device dependent checks
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from stoker.worker.health_guard import (EXIT_TRAINING_DIVERGED, EXIT_TRAINING_PAUSED, TrainingDiverged,
                                            TrainingPaused)

    try:
        summary = trainer.run()
    except TrainingDiverged as exc:  # the job cannot train on: say why, exit so the operator fails it
        trainer.session.set_phase("FAILED", error=f"TrainingDiverged: {exc}")
        print(f"training diverged: {exc}", file=sys.stderr)
        return EXIT_TRAINING_DIVERGED
    except TrainingPaused as exc:  # spec.health says Pause: the operator holds the job until a restart request
        trainer.session.set_phase("FAILED", error=f"TrainingPaused: {exc}")
        print(f"training paused: {exc}", file=sys.stderr)
        return EXIT_TRAINING_PAUSED
    except BaseException as exc:
        trainer.session.set_phase("FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        trainer.close()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("step", "checksum", "world_size", "mode", "resumed_from")}))
    return 0


if __name__ == "__main__":
    try:
        rc = main() or 0  # @record turns SystemExit(0) (e.g. --help) into None
    except SystemExit as exc:  # argparse usage errors, explicit exits
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the trainer's error (e.g. a peer lost mid-collective)
        # printed as the interpreter would (sys.excepthook: torch's prefixes each line with the rank), then
        # the same quick exit: an interpreter teardown after an error waited for the trainer's threads and
        # torch's destructors (~0.9 s before the launcher could restart it, seen after a peer's node was
        # lost) and can abort in gloo's (SIGABRT, not exit 1)
        sys.excepthook(*sys.exc_info())
        rc = 1
    exit_process(rc)  # process_exit.py: gloo can abort a finished worker at teardown
