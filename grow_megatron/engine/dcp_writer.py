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
  child failed makes it raise on every rank, so the save is never published.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.base import AsyncSaveShardedStrategy
from megatron.core.dist_checkpointing.strategies.torch import (MCoreSavePlanner,
                                                               _replace_state_dict_keys_with_sharded_keys,
                                                               mcore_to_pyt_state_dict)
from torch.distributed.checkpoint.api import CheckpointException

from grow_megatron.engine.distributed import broadcast_from_rank0, gather_on_rank0, rank, scatter_from_rank0
from grow_megatron.engine.faults import fault_point
from grow_megatron.engine.integrity import file_entry

_RESULT = ".write_result.{rank}.pkl"  # the child's results; read and removed by the finalize step


def _to_pyt(sharded_state_dict):
    sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict,
                                                                          keep_only_main_replica=True)
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


def _write_in_child(writer: dcp.FileSystemWriter, plan, planner: MCoreSavePlanner, checkpoint_dir: str,
                    rank: int) -> None:
    """The forked writer: write this rank's items, digest them, leave both in a result file
    (renamed into place, so a file present is a complete result)."""
    # The parent's OpenMP thread pool does not survive fork (libgomp waits forever for its
    # threads at the first parallel copy): this process copies on one thread.
    torch.set_num_threads(1)
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


class DirectSaveStrategy(AsyncSaveShardedStrategy):
    """megatron's torch_dist format written by DCP's FileSystemWriter (see the module doc).
    `digests` holds, after a save, this rank's manifest entries when the writer computed them
    (async saves), for save_checkpoint's seal."""

    def __init__(self, thread_count: int = 2):
        super().__init__("torch_dist", 1)
        self.thread_count = thread_count
        self.digests: Optional[dict[str, dict]] = None

    @property
    def can_handle_sharded_objects(self):
        return True

    def _writer_and_planner(self, checkpoint_dir: str) -> tuple[dcp.FileSystemWriter, MCoreSavePlanner]:
        return (dcp.FileSystemWriter(checkpoint_dir, thread_count=self.thread_count, sync_files=True),
                MCoreSavePlanner(flatten_state_dict=False, can_run_decentralized_global_plan=False))

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

        def finalize() -> None:
            path = os.path.join(checkpoint_dir, _RESULT.format(rank=me))
            mine = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    mine = pickle.load(f)
                os.remove(path)
            gathered = gather_on_rank0(mine)
            failed = None
            if rank() == 0:
                failed = [r for r, m in enumerate(gathered) if m is None]
                if not failed:
                    writer.finish(metadata=metadata, results=[m["results"] for m in gathered])
            failed = broadcast_from_rank0(failed)
            if failed:
                raise CheckpointException("async checkpoint write", {
                    r: RuntimeError(f"rank {r}'s checkpoint writer exited without writing its shards") for r in failed})
            self.digests = mine["digests"]

        return AsyncRequest(_write_in_child, (writer, plan, planner, checkpoint_dir, me), [finalize])
