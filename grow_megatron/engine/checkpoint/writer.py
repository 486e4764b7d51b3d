"""Writing a checkpoint: the atomic save sequence (this package's __init__ describes it).

The optimizer state is stored in model space: for every parameter's ShardedTensor in megatron's
model sharded state dict, three more with the same sharding (fp32 main copy, exp_avg,
exp_avg_sq). dist_checkpointing then reshards weights and optimizer state alike, so a
checkpoint written at one TP x PP x DP layout resumes at another.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from megatron.core import dist_checkpointing
from torch.distributed.checkpoint.api import CheckpointException

from grow_megatron import __version__
from grow_megatron.config.base import RunEnvironmentError
from grow_megatron.engine.checkpoint.directory import LATEST, is_growth_checkpoint, latest_checkpoint, list_checkpoints
from grow_megatron.engine.checkpoint.integrity import (
    META,
    digest_files,
    fsync_dir,
    rank_shard_files,
    write_manifest,
)
from grow_megatron.engine.checkpoint.optim_state import optimizer_step_count
from grow_megatron.engine.checkpoint.sharded_state import sharded_state
from grow_megatron.engine.checkpoint.torch_dist import DirectSaveStrategy
from grow_megatron.engine.distributed import barrier, broadcast_from_rank0, gather_on_rank0, on_rank0, rank
from grow_megatron.engine.faults import fault_point
from grow_megatron.engine.staging import exchange_dirs as _exchange

if TYPE_CHECKING:
    from grow_megatron.engine.build import Engine
    from grow_megatron.engine.checkpoint.shard_strategies import AsyncSaver

WRITTEN_BY = f"grow_megatron {__version__}"
"""meta.json's `written_by`: this version always writes a manifest (integrity.py refuses a
checkpoint it wrote that has none)."""


def _rank0() -> bool:
    return rank() == 0


def _install(tmp: str, final: str, step: int, exchange: Callable[[str, str], bool]) -> str | None:
    """Put the complete `tmp` at `final`; returns the old copy to delete (or None). A complete
    `final` (or, in the fallback, its .old- copy that readers fall back to) exists throughout."""
    if not os.path.exists(final):
        os.replace(tmp, final)
        return None
    if exchange(tmp, final):
        return tmp  # now holds the old copy
    aside = f"{final}.old-{uuid.uuid4().hex[:8]}"
    os.replace(final, aside)
    fault_point("save.aside", step)
    os.replace(tmp, final)
    return aside


def _remove_stale(ckpt_root: str) -> None:
    """Before a save: drop what interrupted saves left (their disk space may be what the next
    save needs), restoring an old copy whose replacement never arrived."""
    for d in os.listdir(ckpt_root):
        path = os.path.join(ckpt_root, d)
        if ".old-" in d:
            final = os.path.join(ckpt_root, d.split(".old-")[0])
            if not os.path.exists(final) and os.path.isfile(os.path.join(path, META)):
                os.replace(path, final)
                continue
        if ".tmp-" in d or ".old-" in d:
            shutil.rmtree(path, ignore_errors=True)
    latest_tmp = os.path.join(ckpt_root, f".{LATEST}.tmp")
    if os.path.exists(latest_tmp):
        os.remove(latest_tmp)


def _disk_full(err: BaseException) -> OSError | None:
    """The ENOSPC OSError inside `err` (DCP wraps each rank's failure), or None."""
    seen = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        todo.extend([e.__cause__, e.__context__])
        for failure in (getattr(e, "failures", None) or {}).values():  # {rank: (exception, traceback)}
            todo.extend(failure if isinstance(failure, tuple) else [failure])
    return None


def save_checkpoint(
    engine: Engine,
    ckpt_root: str,
    step: int,
    meta: dict,
    *,
    growth: bool = False,
    keep_last: int | None = None,
    exchange: Callable[[str, str], bool] | None = None,
    saver: AsyncSaver | None = None,
) -> str:
    """Save the engine after `step` completed steps; returns the checkpoint directory.

    `growth` marks a checkpoint written right before a growth: pruning keeps those (the flag
    lives in meta.json, so every later run sees it). `keep_last` periodic checkpoints are kept.
    A full disk is reported in one line; the last good checkpoint stays `latest`. `exchange`
    swaps two directories atomically (default: renameat2 where the OS has it). `saver`: write
    asynchronously (engine/async_save.py): the shards are written by a background process and
    the rest of the sequence (seal, publish) runs once every rank's writer finished; the
    directory appears only then."""
    if saver is not None:  # one save in flight: the previous one is published first
        saver.wait()
    name = f"step_{step:08d}"
    final = os.path.join(ckpt_root, name)
    tmp = broadcast_from_rank0(f"{final}.tmp-{uuid.uuid4().hex[:8]}" if _rank0() else None)
    # Taken now, not when an async save is sealed: the caller's meta (e.g. its growth list) and
    # the engine may change while the shards are written. A re-save keeps the growth mark of
    # the copy it replaces.
    full_meta = json.loads(
        json.dumps(
            {
                **meta,
                "step": step,
                "depth": engine.depth,
                "split": list(engine.split),
                "written_by": WRITTEN_BY,
                "growth_checkpoint": growth or (_rank0() and is_growth_checkpoint(final)),
            }
        )
    )

    def begin():
        os.makedirs(ckpt_root, exist_ok=True)
        _remove_stale(ckpt_root)
        fault_point("save.begin", step)
        os.makedirs(tmp)

    def seal(mine: dict | None = None):
        # Every rank digests the shard files it wrote, at the same time (an async writer did it
        # already: `mine`); rank 0 adds the rest.
        if mine is None:
            mine = digest_files(tmp, rank_shard_files(tmp, rank()))
        digested = gather_on_rank0(mine)

        def write():
            fault_point("save.written", step)
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(full_meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            write_manifest(tmp, {rel: e for part in digested for rel, e in part.items()})
            fsync_dir(tmp)
            fault_point("save.sealed", step)

        on_rank0(write)

    def publish():
        old = _install(tmp, final, step, exchange or _exchange)
        fault_point("save.swapped", step)
        fsync_dir(ckpt_root)
        if old is not None:
            shutil.rmtree(old)
        latest_tmp = os.path.join(ckpt_root, f".{LATEST}.tmp")
        with open(latest_tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        fault_point("save.latest", step)
        os.replace(latest_tmp, os.path.join(ckpt_root, LATEST))
        fsync_dir(ckpt_root)
        fault_point("save.done", step)
        _prune(ckpt_root, name, keep_last, background=saver is not None)

    strategy = DirectSaveStrategy()

    def finish():
        barrier()
        seal(strategy.digests)
        on_rank0(publish)
        barrier()

    def failed(err: BaseException) -> None:
        """A full disk, in one line, with the partial save removed; anything else as it is."""
        full = _disk_full(err)
        if full is None:
            return
        if _rank0():
            shutil.rmtree(tmp, ignore_errors=True)
        good = latest_checkpoint(ckpt_root)
        raise RunEnvironmentError(
            "checkpoint",
            tmp,
            f"ENOSPC (no space left on device) while saving step {step} "
            f"({full.filename or 'a checkpoint file'}): free disk space or set "
            f"run_dir on a larger disk; the partial save was removed and "
            f"{good or 'no checkpoint'} stays the last good one",
        ) from err

    try:
        on_rank0(begin)
        barrier()
        sd, _ = sharded_state(engine, for_load=False)
        sd["common"] = {"optimizer_step": optimizer_step_count(engine.optimizer)}
        if saver is not None:
            # megatron's async writer (a forked process per save, see async_save.py); `finish`
            # runs on every rank once all writers are done, a failed writer raises everywhere
            # (through `failed`, at the step that finds it done).
            saver.submit(
                dist_checkpointing.save(sd, tmp, sharded_strategy=strategy, async_sharded_save=True),
                finish,
                on_error=failed,
            )
            return final
        dist_checkpointing.save(sd, tmp, sharded_strategy=strategy)
        barrier()
        seal()
    except (OSError, CheckpointException) as err:
        failed(err)
        raise
    on_rank0(publish)
    barrier()
    return final


def _prune(ckpt_root: str, saved: str, keep_last: int | None, background: bool = False) -> None:
    """Keep the newest `keep_last` periodic checkpoints, every growth checkpoint (by the mark in
    its meta.json) and the one just saved. `background`: rename the others to `.tmp-` names at
    once (never read; the next save removes what is left) and delete them in a thread: an async
    save's publish runs on the training thread, and unlinking a large checkpoint takes longer
    than everything else it does."""
    if keep_last is None:
        return
    removable = [
        d for d in list_checkpoints(ckpt_root) if d != saved and not is_growth_checkpoint(os.path.join(ckpt_root, d))
    ]
    doomed = [os.path.join(ckpt_root, d) for d in removable[: max(0, len(removable) - (keep_last - 1))]]
    if background:
        trash = [f"{path}.tmp-pruned-{uuid.uuid4().hex[:8]}" for path in doomed]
        for path, aside in zip(doomed, trash):
            os.replace(path, aside)
        threading.Thread(
            target=lambda: [shutil.rmtree(a, ignore_errors=True) for a in trash], name="prune-checkpoints", daemon=True
        ).start()
        return
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
