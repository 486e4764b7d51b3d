"""megatron's torch_dist checkpoint format, written by torch DCP's FileSystemWriter, in this
process (sync) or in one forked process per save (async).

The translation is megatron's TorchDistSaveShardedStrategy's, so megatron's standard load
strategy reads the result. What differs is who writes:
- megatron's async writer (FileSystemWriterAsync) clones every tensor that is a view before it
  forks (all of ours are: DDP's parameter buffer, the optimizer's flat DP ranges), on the
  training thread, 0.57 s of a 0.74 s stall for a 770 MB save on CPU (docs/benchmarks.md), and
  returns its results through a multiprocessing Manager process that outlives a SIGKILLed
  trainer;
- here the plan is made on the training thread (DCP's two planning collectives), device
  tensors are copied to the host (a GPU cannot be used after fork), and a forked process
  writes: fork gives it a copy-on-write snapshot of host memory, so nothing is cloned on the
  training thread. The child also digests what it wrote (integrity.py's per-item entries), and
  leaves its write results and digests in a file. The finalize step (every rank, once all
  children exited) gathers them and the coordinator writes DCP's `.metadata`; a rank whose
  child failed makes it raise on every rank, so the save is never published. A child that
  fails says why through a pipe (no disk needed: the failure may be a full disk) instead of
  printing a traceback, so the trainer can report it in one line.

Both write through `_CheckedWriter`: torch's writer hands files to helper threads whose
exceptions only reach `threading.excepthook` (a traceback on stderr, and a result list that
silently lacks their files); it collects them and raises the first, and names a full disk
that torch reported as a short zip record ("unexpected pos") as the ENOSPC it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from traceback import StackSummary

import torch
import torch.distributed.checkpoint as dcp
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.base import AsyncSaveShardedStrategy
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint.api import CheckpointException

from grow_megatron.engine.checkpoint.integrity import file_entry
from grow_megatron.engine.distributed import broadcast_from_rank0, gather_on_rank0, rank, scatter_from_rank0
from grow_megatron.engine.faults import fault_point

_RESULT = ".write_result.{rank}.pkl"  # the child's results; read and removed by the finalize step
_WRITER_THREAD = "(_write_files_from_queue)"  # torch's helper threads are named "Thread-N (target)"
# Below this much free space a failed write is a full disk: torch's zip writer reports a short
# write as "unexpected pos" and drops the OSError(ENOSPC) behind it.
_FULL_BELOW = 1 << 20
_REPORT_LIMIT = 4000  # characters of a child's failure message (its report stays well under a pipe's buffer)


@contextlib.contextmanager
def _writer_thread_failures() -> Iterator[list[BaseException]]:
    """Collect the exceptions of torch's writer threads started inside the context (the
    process-wide hook is swapped only for its duration; other threads' go to the old hook)."""
    failures: list[BaseException] = []
    previous = threading.excepthook

    def hook(args) -> None:
        if args.thread is not None and args.thread.name.endswith(_WRITER_THREAD):
            failures.append(args.exc_value)
        else:
            previous(args)

    threading.excepthook = hook
    try:
        yield failures
    finally:
        # torch joins its threads only when its own share of the files succeeded.
        for t in threading.enumerate():
            if t is not threading.current_thread() and t.name.endswith(_WRITER_THREAD):
                t.join()
        threading.excepthook = previous


def _first_disk_full(errors: list[BaseException]) -> OSError | None:
    for e in errors:
        while e is not None:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                return e
            e = e.__cause__ or e.__context__
    return None


class _CheckedWriter(dcp.FileSystemWriter):
    """torch's FileSystemWriter whose helper threads' failures are raised, not printed (module doc)."""

    def write_data(self, plan, planner):
        errors: list[BaseException] = []
        future = None
        with _writer_thread_failures() as failed:
            try:
                future = super().write_data(plan, planner)
            except Exception as err:  # noqa: BLE001 (re-raised below, after the threads' failures)
                errors.append(err)
        errors += failed
        if not errors:
            return future
        full = _first_disk_full(errors)
        if full is None and shutil.disk_usage(self.path).free < _FULL_BELOW:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) from errors[0]
        raise full or errors[0]


def _to_pyt(sharded_state_dict):
    sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
        sharded_state_dict, keep_only_main_replica=True
    )
    return mcore_to_pyt_state_dict(sharded_state_dict, False)


def _stage_on_host(sharded_state_dict) -> None:
    """Device tensors -> host copies (the forked writer cannot touch the GPU); host tensors stay."""

    def stage(x):
        if isinstance(x, ShardedTensor) and x.data is not None and x.data.device.type != "cpu":
            x.data = x.data.to("cpu")
        return x

    dict_list_map_inplace(stage, sharded_state_dict)


def _plan(writer: dcp.FileSystemWriter, planner: MCoreSavePlanner, pyt_state_dict):
    """DCP's planning (torch's _save_state_dict: local plans gathered, one global plan made on
    rank 0 and scattered back). Returns this rank's final plan and, on rank 0, the metadata."""
    coordinator = rank() == 0
    planner.set_up_planner(state_dict=pyt_state_dict, storage_meta=writer.storage_meta(), is_coordinator=coordinator)
    writer.set_up_storage_writer(coordinator)
    local = writer.prepare_local_plan(planner.create_local_plan())
    # Torch's _save_state_dict does the same through its private _DistWrapper.
    plans = gather_on_rank0(local)
    metadata = None
    if coordinator:
        plans, metadata = planner.create_global_plan(plans)
        plans = writer.prepare_global_plan(plans)
    return planner.finish_plan(scatter_from_rank0(plans if coordinator else None)), metadata


def _digests(checkpoint_dir: str, results) -> dict[str, dict]:
    """integrity.py's manifest entries for the files these write results fill (their items are
    the results' storage records, so no `.metadata` is needed yet)."""
    by_file: dict[str, list] = {}
    for r in results:
        info = r.storage_data
        by_file.setdefault(info.relative_path, []).append((info.offset, info.length, r.index.fqn))
    return {rel: file_entry(os.path.join(checkpoint_dir, rel), items) for rel, items in by_file.items()}


def _write_in_child(
    writer: dcp.FileSystemWriter, plan, planner: MCoreSavePlanner, checkpoint_dir: str, rank: int, report_fd: int
) -> None:
    """The forked writer: write this rank's items, digest them, leave both in a result file
    (renamed into place, so a file present is a complete result). A failure is reported through
    `report_fd` (what it was, its errno and file) instead of as a traceback on stderr."""
    # The parent's OpenMP thread pool does not survive fork (libgomp waits forever for its
    # threads at the first parallel copy): this process copies on one thread.
    torch.set_num_threads(1)
    try:
        fault_point("save.writer")
        future = writer.write_data(plan, planner)
        future.wait()
        results = future.value()
        out = os.path.join(checkpoint_dir, _RESULT.format(rank=rank))
        with open(out + ".tmp", "wb") as f:
            pickle.dump({"results": results, "digests": _digests(checkpoint_dir, results)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(out + ".tmp", out)
    except BaseException as err:  # noqa: BLE001 (this process's last act: say why, then exit 1)
        report = {
            "type": type(err).__name__,
            "message": str(err)[:_REPORT_LIMIT],
            "errno": getattr(err, "errno", None),
            "strerror": getattr(err, "strerror", None),
            "filename": getattr(err, "filename", None),
        }
        os.write(report_fd, pickle.dumps(report))
        os._exit(1)


def _read_report(read_fd: int) -> dict | None:
    """What a failed child wrote to its pipe (it has exited: whatever it wrote is there)."""
    os.set_blocking(read_fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read_fd, 1 << 16):
            data += chunk
    os.close(read_fd)
    try:
        return pickle.loads(data) if data else None
    except (pickle.UnpicklingError, EOFError, ValueError):
        return None


def _writer_failure(r: int, report: dict | None) -> BaseException:
    """The exception that stands for rank r's failed writer (an OSError where it had one, so
    that save_checkpoint recognises a full disk)."""
    if report is None:
        return RuntimeError(f"rank {r}'s checkpoint writer exited without writing its shards (killed?)")
    if report["errno"] is not None:
        return OSError(
            report["errno"],
            report["strerror"] or report["message"],
            *([report["filename"]] if report["filename"] else []),
        )
    return RuntimeError(f"rank {r}'s checkpoint writer failed: {report['type']}: {report['message']}")


class DirectSaveStrategy(AsyncSaveShardedStrategy):
    """megatron's torch_dist format written by DCP's FileSystemWriter (see the module doc).
    `digests` holds, after a save, this rank's manifest entries when the writer computed them
    (async saves), for save_checkpoint's seal."""

    def __init__(self, thread_count: int = 2):
        super().__init__("torch_dist", 1)
        self.thread_count = thread_count
        self.digests: dict[str, dict] | None = None

    @property
    def can_handle_sharded_objects(self):
        return True

    def _writer_and_planner(self, checkpoint_dir: str) -> tuple[dcp.FileSystemWriter, MCoreSavePlanner]:
        return (
            _CheckedWriter(checkpoint_dir, thread_count=self.thread_count, sync_files=True),
            MCoreSavePlanner(flatten_state_dict=False, can_run_decentralized_global_plan=False),
        )

    def save(self, sharded_state_dict, checkpoint_dir) -> None:
        writer, planner = self._writer_and_planner(str(checkpoint_dir))
        dcp.save(_to_pyt(sharded_state_dict), storage_writer=writer, planner=planner)

    def async_save(self, sharded_state_dict, checkpoint_dir) -> AsyncRequest:
        checkpoint_dir = str(Path(checkpoint_dir))
        _stage_on_host(sharded_state_dict)
        pyt_state_dict = _to_pyt(sharded_state_dict)
        writer, planner = self._writer_and_planner(checkpoint_dir)
        plan, metadata = _plan(writer, planner, pyt_state_dict)
        me = rank()
        read_fd, report_fd = os.pipe()

        def finalize() -> None:
            os.close(report_fd)
            report = _read_report(read_fd)
            path = os.path.join(checkpoint_dir, _RESULT.format(rank=me))
            mine = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    mine = pickle.load(f)
                os.remove(path)
            gathered = gather_on_rank0(mine if mine is not None else {"failed": report})
            failed = None
            if rank() == 0:
                failed = {r: m["failed"] for r, m in enumerate(gathered) if "failed" in m}
                if not failed:
                    writer.finish(metadata=metadata, results=[m["results"] for m in gathered])
            failed = broadcast_from_rank0(failed)
            if failed:
                raise CheckpointException(
                    "async checkpoint write",
                    {r: (_writer_failure(r, report), StackSummary()) for r, report in failed.items()},
                )
            self.digests = mine["digests"]

        return AsyncRequest(_write_in_child, (writer, plan, planner, checkpoint_dir, me, report_fd), [finalize])
