"""CheckpointManager: sharded, committed, retained checkpoints through torch DCP.

Save protocol for step N (every rank calls ``save`` with the same step):

1. the coordinator removes a leftover ``step-N`` folder (a partial write from a
   killed run); all ranks agree that this worked;
2. ``torch.distributed.checkpoint.save`` writes each rank's shards, then gathers
   every rank's write result on the coordinator, which writes ``.metadata``;
   a failure on any rank fails the save on all ranks;
3. the coordinator checks that every shard named in the metadata is stored with
   the right size, writes ``stoker.json`` and then, LAST, ``COMMITTED``;
4. the coordinator tells all ranks whether the commit happened, then deletes
   checkpoints beyond ``keep`` (never the newest committed one).

Readers use only folders with ``COMMITTED``, so a killed or failed save is
never loaded. With ``async_mode="async"`` the state is copied to CPU memory in
``save`` (the only part the training loop waits for) and steps 1-4 run on a
background thread over the manager's own gloo process group.

Save failures (storage unreachable beyond the retry window, a rank failing to
write) are logged and reported through ``last_result`` / ``on_result``; they
are not raised, so training goes on and the next save tries again.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.stateful import Stateful

from stoker.common import layout
from stoker.worker.state import refuse_fresh_optimizers

from . import fence
from .retention import plan_deletions
from .store import Store, committed_steps, manifest_bytes, newest_committed, open_store

log = logging.getLogger("stoker.worker.checkpoint")
_SINGLE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"
AsyncMode = Literal["disabled", "async"]


@contextlib.contextmanager
def _quiet_if_single(single: bool):
    """DCP warns on every single-process save/load; that use is intended here."""
    if not single:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING)
        yield


@dataclass(frozen=True)
class SaveResult:
    """Outcome of one save, the same on every rank."""

    step: int
    ok: bool
    duration_s: float          # from save() call to commit (or failure)
    blocked_s: float           # how long save() held the training loop
    bytes: int = 0             # total stored bytes of the checkpoint (0 if failed)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckpointManager:
    """Save and load sharded checkpoints under ``uri``.

    Args:
        uri: ``s3://bucket/prefix`` or a local path / ``file://`` URI.
        keep: how many committed checkpoints to keep (>= 1).
        async_mode: ``"async"`` (stage to CPU, upload in the background) or
            ``"disabled"`` (``save`` returns once committed).
        process_group: the ranks that save together (default: all ranks). When
            torch.distributed is initialized, constructing the manager is a
            collective call (it creates a gloo group for checkpoint traffic).
        retry_timeout_s: how long storage calls are retried before a save fails.
        on_result: called with every :class:`SaveResult` on every rank as soon
            as the save is done (for async saves on the checkpoint thread), e.g.
            ``session.report_checkpoint``.
        store: an explicit :class:`Store` (tests, benchmarks); overrides ``uri``.
        before_commit: called with the step on every rank once every shard and
            DCP's ``.metadata`` of that save are stored and before anything is
            committed (for async saves on the checkpoint thread): a fault-injection
            point for tests (the trainer's ``debug.slow_checkpoint_at_step``).
        on_committed: called with the step on the coordinator the moment its
            ``COMMITTED`` marker is stored, before the other ranks are told (a
            witness for tests: the step journal records it there, so a kill while
            the outcome is passed around does not hide a commit that happened).

    ``save``, ``load`` and ``close`` must be called by every rank of the group,
    in the same order; ``latest_step`` and ``wait`` may be called by any rank.
    """

    def __init__(
        self,
        uri: str,
        keep: int = 3,
        async_mode: AsyncMode = "async",
        process_group: dist.ProcessGroup | None = None,
        *,
        retry_timeout_s: float = 120.0,
        on_result: Callable[[SaveResult], None] | None = None,
        store: Store | None = None,
        before_commit: Callable[[int], None] | None = None,
        on_committed: Callable[[int], None] | None = None,
        incarnation: int | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (got {keep}): the newest checkpoint is always kept")
        if async_mode not in ("disabled", "async"):
            raise ValueError(f"async_mode must be 'disabled' or 'async' (got {async_mode!r})")
        self.store: Store = store if store is not None else open_store(uri, retry_timeout_s=retry_timeout_s)
        self.uri = self.store.uri
        self.keep = keep
        self.async_mode = async_mode
        self.on_result = on_result
        self.before_commit = before_commit
        self.on_committed = on_committed
        # fence.py: an older incarnation than the checkpoints' fence changes nothing
        self.incarnation = incarnation if incarnation is not None else fence.incarnation_from_env()
        self.last_result: SaveResult | None = None
        self._distributed = dist.is_available() and dist.is_initialized()
        self._pg: dist.ProcessGroup | None = None
        if self._distributed:
            ranks = dist.get_process_group_ranks(process_group or dist.group.WORLD)
            self._pg = dist.new_group(ranks=ranks, backend="gloo")
        self.rank = dist.get_rank(self._pg) if self._pg is not None else 0
        self.world_size = dist.get_world_size(self._pg) if self._pg is not None else 1
        self.is_coordinator = self.rank == 0
        self._executor: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="stoker-ckpt") if async_mode == "async" else None
        )
        self._pending: Future[SaveResult] | None = None
        self._closed = False

    # ---------------------------------------------------------------- queries
    def latest_step(self) -> int | None:
        """Newest committed step in storage (reads storage; any rank may call)."""
        return newest_committed(self.store)

    def committed_steps(self) -> list[int]:
        return committed_steps(self.store)

    # ------------------------------------------------------------------- save
    def save(self, step: int, state: dict[str, Any], manifest_extra: dict[str, Any] | None = None) -> None:
        """Checkpoint ``state`` (a dict of ``Stateful`` objects and/or plain state
        dicts) as ``step``. Waits for the previous async save first. In async mode
        returns once the state is copied to CPU; otherwise once committed.
        ``manifest_extra``: small JSON fields the commit manifest carries (read back
        with ``store.read_json(step, MANIFEST)``), as of this call."""
        self._check_open()
        layout.step_dir(step)  # validates step >= 0
        self.wait()
        t0 = time.monotonic()
        state_dict = {k: (v.state_dict() if isinstance(v, Stateful) else v) for k, v in state.items()}
        if self._executor is None:
            self._finish(self._save_blocking(step, state_dict, t0, None, manifest_extra))
            return
        staged, stage_error = None, None
        # A fresh stager per save: a DefaultStager caches its CPU storages between stage() calls
        # (reusing one across saves was reported broken in a torch release); close() drops only
        # that cache, the staged copy stays alive through `staged`.
        stager = DefaultStager(StagingOptions(False, False, False, False))
        try:
            staged = stager.stage(state_dict)
        except Exception as exc:  # noqa: BLE001 - e.g. out of CPU memory: report, don't kill training
            stage_error = repr(exc)
        finally:
            stager.close()
        if not self._all_ok(stage_error is None):  # every rank saves, or none does (no half-joined collectives)
            took = time.monotonic() - t0
            log.error("checkpoint.failed step=%d phase=staging error=%s", step, stage_error)
            self._finish(SaveResult(step, False, took, took, error=f"staging: {stage_error or 'failed on another rank'}"))
            return
        blocked = time.monotonic() - t0
        self._pending = self._executor.submit(self._save_and_report, step, staged, t0, blocked,
                                             dict(manifest_extra or {}))
        log.info("checkpoint.staged step=%d blocked_s=%.3f", step, blocked)

    def in_flight(self) -> bool:
        """True while an async save is still uploading/committing."""
        return self._pending is not None and not self._pending.done()

    def wait(self) -> SaveResult | None:
        """Block until the in-flight async save (if any) is done; return its result."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        return pending.result()  # _save_and_report never raises

    def _save_and_report(self, step: int, state_dict: dict, t0: float, blocked_s: float,
                         extra: dict[str, Any]) -> SaveResult:
        result = self._save_blocking(step, state_dict, t0, blocked_s, extra)
        self._finish(result)  # on the checkpoint thread, as soon as the save is done
        return result

    def _finish(self, result: SaveResult) -> None:
        self.last_result = result
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - a reporting hook must not break training
                log.exception("checkpoint.on_result_failed step=%d", result.step)

    def _all_ok(self, ok: bool) -> bool:
        if self._pg is None:
            return ok
        flags: list[Any] = [None] * self.world_size
        dist.all_gather_object(flags, ok, group=self._pg)
        return all(flags)

    def _from_coordinator(self, value: Any) -> Any:
        if self._pg is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self._pg, 0), group=self._pg)
        return box[0]

    def _save_blocking(self, step: int, state_dict: dict, t0: float, blocked_s: float | None,
                       extra: dict[str, Any] | None = None) -> SaveResult:
        def result(ok: bool, nbytes: int = 0, error: str | None = None) -> SaveResult:
            took = time.monotonic() - t0
            return SaveResult(step, ok, took, took if blocked_s is None else blocked_s, nbytes, error)

        # 1. clear a leftover partial folder of the same step
        prep_error = None
        if self.is_coordinator:
            try:
                fence.check(self.store, self.incarnation)
                if step in self.store.list_steps():
                    self.store.delete_step(step)
            except Exception as exc:  # noqa: BLE001 - logged at once: telling the others may hang (a peer gone)
                prep_error = repr(exc)
                log.error("checkpoint.not_committed step=%d phase=prepare error=%s", step, prep_error)
        if not self._all_ok(prep_error is None):
            log.error("checkpoint.failed step=%d phase=prepare error=%s", step, prep_error)
            return result(False, error=f"prepare: {prep_error or 'failed on the coordinator'}")

        # 2. shards + .metadata (DCP gathers every rank's outcome)
        try:
            with _quiet_if_single(self._pg is None):
                metadata = dcp.save(
                    state_dict,
                    storage_writer=self.store.writer(step),
                    process_group=self._pg,
                    no_dist=self._pg is None,
                )
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - identical on all ranks
            log.error("checkpoint.failed step=%d phase=write error=%r", step, exc)
            return result(False, error=f"write: {exc!r}")
        if self.before_commit is not None:
            try:
                self.before_commit(step)
            except Exception:  # noqa: BLE001 - a test hook must not break the save
                log.exception("checkpoint.before_commit_failed step=%d", step)

        # 3. verify + manifest + COMMITTED (coordinator), 4. tell everyone
        outcome: tuple[bool, int, str | None] = (False, 0, None)
        if self.is_coordinator:
            try:
                nbytes = self._commit(step, metadata, extra)
                outcome = (True, nbytes, None)
            except Exception as exc:  # noqa: BLE001 - logged at once: telling the others may hang (a peer gone)
                outcome = (False, 0, repr(exc))
                log.error("checkpoint.not_committed step=%d phase=commit error=%r", step, exc)
            if outcome[0] and self.on_committed is not None:
                try:
                    self.on_committed(step)
                except Exception:  # noqa: BLE001 - a witness must not break the save
                    log.exception("checkpoint.on_committed_failed step=%d", step)
        ok, nbytes, error = self._from_coordinator(outcome)
        if not ok:
            log.error("checkpoint.failed step=%d phase=commit error=%s", step, error)
            return result(False, error=f"commit: {error}")
        res = result(True, nbytes)
        log.info("checkpoint.committed step=%d bytes=%d duration_s=%.3f uri=%s", step, nbytes, res.duration_s, self.uri)
        if self.is_coordinator:
            self._retain()
        return res

    def _commit(self, step: int, metadata, extra: dict[str, Any] | None = None) -> int:
        fence.check(self.store, self.incarnation)
        files = self.store.list_files(step)
        needed: dict[str, int] = {}
        for info in metadata.storage_data.values():
            needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
        missing = sorted(p for p, size in needed.items() if files.get(p, -1) < size)
        if layout.DCP_METADATA not in files:
            missing.append(layout.DCP_METADATA)
        if missing:
            raise RuntimeError(f"shards missing or short after save of step {step}: {missing}")
        shards = {p: files[p] for p in sorted(needed)}
        manifest = manifest_bytes(
            format="torch-dcp",
            step=step,
            world_size=self.world_size,
            shards=shards,
            bytes=sum(files.values()),
            created_at=time.time(),
            writer_host=socket.gethostname(),
            incarnation=self.incarnation,
            torch_version=torch.__version__,
            **(extra or {}),
        )
        self.store.write_bytes(step, layout.MANIFEST, manifest)
        self.store.write_bytes(step, layout.COMMIT_MARKER, manifest_bytes(step=step, committed_at=time.time()))
        return sum(files.values()) + len(manifest)

    def _retain(self) -> None:
        try:
            fence.check(self.store, self.incarnation)
            steps = self.store.list_steps()
            doomed = plan_deletions(steps, [s for s in steps if self.store.is_committed(s)], self.keep)
            for s in doomed:
                self.store.delete_step(s)
            if doomed:
                log.info("checkpoint.retention deleted=%s keep=%d", doomed, self.keep)
        except Exception:  # noqa: BLE001 - retention is best effort, the next save retries
            log.exception("checkpoint.retention_failed")

    # ------------------------------------------------------------------- load
    def load(self, state: dict[str, Any], step: int | None = None) -> int | None:
        """Load in place into ``state`` (same keys as saved; ``Stateful`` objects get ``load_state_dict``).
        ``step=None``: the newest committed. Returns the step loaded, None if none. Any world size."""
        return self.load_claimed(state, self.claim(step))

    def load_claimed(self, state: dict[str, Any], chosen: int | None) -> int | None:
        """``load`` of the step ``claim`` just returned (every rank passes the same)."""
        if chosen is None:
            log.info("checkpoint.none uri=%s", self.uri)
            return None
        refuse_fresh_optimizers(state)
        t0 = time.monotonic()
        try:
            with _quiet_if_single(self._pg is None):
                dcp.load(state, storage_reader=self.store.reader(chosen), process_group=self._pg,
                         no_dist=self._pg is None)
        except CheckpointException as exc:  # a BaseException: make it an ordinary error
            raise RuntimeError(f"loading checkpoint step {chosen} from {self.uri} failed: {exc}") from None
        log.info("checkpoint.loaded step=%d duration_s=%.3f uri=%s", chosen, time.monotonic() - t0, self.uri)
        return chosen

    def claim(self, step: int | None = None) -> int | None:
        """Collective: the coordinator raises the fence and picks the committed step (None: newest) for all."""
        self._check_open()
        self.wait()
        choice: int | str | None = None
        if self.is_coordinator:
            try:
                fence.claim(self.store, self.incarnation)
                choice = self._choose(step)
            except Exception as exc:  # noqa: BLE001 - tell the other ranks instead of leaving them waiting
                choice = f"cannot list checkpoints under {self.uri}: {exc!r}"
        if isinstance(chosen := self._from_coordinator(choice), str):
            raise ValueError(chosen)
        return chosen

    def _choose(self, step: int | None) -> int | str | None:
        if step is None:
            return self.latest_step()
        if not self.store.is_committed(step):
            return (f"checkpoint step {step} under {self.uri} is not committed "
                    f"(committed steps: {self.committed_steps()}); pass step=None for the newest")
        return step

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Wait for the in-flight save and release the worker thread."""
        if self._closed:
            return
        self.wait()
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("CheckpointManager is closed")
