"""Writing a checkpoint: one save sequence (CheckpointWriter; this package's __init__ describes
what it guarantees), whose shards a strategy writes (shard_strategies.py: in this process, or
in one forked process per rank for `checkpoint.async_save`).

Each step is a named fault point (engine/faults.py), in this order: save.begin (before the
.tmp directory is made), save.written (every rank's shards written, meta.json not yet),
save.sealed (meta.json and manifest.json synced), save.aside (rename fallback only: the old
copy moved aside), save.swapped (installed at step_N), save.latest (the new `latest` synced
under a temporary name), save.done (published, before pruning); save.writer is the forked
writer's (torch_dist.py).

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
from grow_megatron.engine.checkpoint.shard_strategies import AsyncShards, ShardStrategy, SyncShards
from grow_megatron.engine.checkpoint.sharded_state import sharded_state
from grow_megatron.engine.distributed import barrier, broadcast_from_rank0, gather_on_rank0, on_rank0, rank
from grow_megatron.engine.faults import fault_point
from grow_megatron.engine.staging import exchange_dirs as _exchange

if TYPE_CHECKING:
    from grow_megatron.engine.build import Engine

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


class _Save:
    """One save in progress: its names and its meta.json, fixed when it starts, and the steps
    of the sequence after the shards (seal, publish, and what a failure leaves)."""

    def __init__(
        self,
        root: str,
        step: int,
        tmp: str,
        meta: dict,
        keep_last: int | None,
        shards: ShardStrategy,
        exchange: Callable[[str, str], bool] | None,
    ) -> None:
        self.root = root
        self.step = step
        self.name = f"step_{step:08d}"
        self.final = os.path.join(root, self.name)
        self.tmp = tmp
        self.meta = meta
        self.keep_last = keep_last
        self.shards = shards
        self.exchange = exchange

    def begin(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        _remove_stale(self.root)
        fault_point("save.begin", self.step)
        os.makedirs(self.tmp)

    def seal(self, mine: dict | None = None) -> None:
        # Every rank digests the shard files it wrote, at the same time (an async writer did it
        # already: `mine`); rank 0 adds the rest.
        if mine is None:
            mine = digest_files(self.tmp, rank_shard_files(self.tmp, rank()))
        digested = gather_on_rank0(mine)

        def write():
            fault_point("save.written", self.step)
            with open(os.path.join(self.tmp, META), "w") as f:
                json.dump(self.meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            write_manifest(self.tmp, {rel: e for part in digested for rel, e in part.items()})
            fsync_dir(self.tmp)
            fault_point("save.sealed", self.step)

        on_rank0(write)

    def publish(self) -> None:
        old = _install(self.tmp, self.final, self.step, self.exchange or _exchange)
        fault_point("save.swapped", self.step)
        fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old)
        latest_tmp = os.path.join(self.root, f".{LATEST}.tmp")
        with open(latest_tmp, "w") as f:
            f.write(self.name)
            f.flush()
            os.fsync(f.fileno())
        fault_point("save.latest", self.step)
        os.replace(latest_tmp, os.path.join(self.root, LATEST))
        fsync_dir(self.root)
        fault_point("save.done", self.step)
        _prune(self.root, self.name, self.keep_last, background=self.shards.background)

    def finish(self, mine: dict | None) -> None:
        """Seal and publish once every rank's shards are written (a background strategy)."""
        barrier()
        self.seal(mine)
        on_rank0(self.publish)
        barrier()

    def failed(self, err: BaseException) -> None:
        """A full disk, in one line, with the partial save removed; anything else as it is."""
        full = _disk_full(err)
        if full is None:
            return
        if _rank0():
            shutil.rmtree(self.tmp, ignore_errors=True)
        good = latest_checkpoint(self.root)
        raise RunEnvironmentError(
            "checkpoint",
            self.tmp,
            f"ENOSPC (no space left on device) while saving step {self.step} "
            f"({full.filename or 'a checkpoint file'}): free disk space or set "
            f"run_dir on a larger disk; the partial save was removed and "
            f"{good or 'no checkpoint'} stays the last good one",
        ) from err


class CheckpointWriter:
    """Every save into one checkpoint root, through one sequence: begin (stale leftovers
    removed, a fresh .tmp directory) -> the shards, written by a strategy
    (shard_strategies.py) -> seal (every rank's digests, meta.json, manifest.json) -> publish
    (installed at step_N, `latest` moved, older checkpoints pruned). A full disk anywhere
    before the publish is reported in one line, the partial save removed; the last good
    checkpoint stays `latest`.

    `asynchronous`: saves may write their shards in a background process (AsyncShards): the
    seal and publish then run once every rank's writer finished, at the `poll` or `wait` (or
    next save) that finds it done, and a failed writer raises there; at most one save is in
    flight. `exchange` swaps two directories atomically (default: renameat2 where the OS has
    it)."""

    def __init__(
        self, ckpt_root: str, *, asynchronous: bool = False, exchange: Callable[[str, str], bool] | None = None
    ) -> None:
        self.root = ckpt_root
        self._exchange = exchange
        self._sync = SyncShards()
        self._background = AsyncShards() if asynchronous else None

    def poll(self) -> None:
        """Publish a finished background save (a collective: every rank, at the same steps)."""
        if self._background is not None:
            self._background.poll()

    def wait(self) -> None:
        """Block until the background save in flight (if any) is written and published."""
        if self._background is not None:
            self._background.wait()

    def save(
        self,
        engine: Engine,
        step: int,
        meta: dict,
        *,
        growth: bool = False,
        keep_last: int | None = None,
        background: bool = True,
    ) -> str:
        """Save the engine after `step` completed steps; returns the checkpoint directory (for
        a background save, where it appears once published).

        `growth` marks a checkpoint written right before a growth: pruning keeps those (the flag
        lives in meta.json, so every later run sees it). `keep_last` periodic checkpoints are
        kept. `background`: write the shards in the background if the writer is asynchronous."""
        shards = self._background if background and self._background is not None else self._sync
        shards.wait()  # one save in flight: the previous one is published first
        final = os.path.join(self.root, f"step_{step:08d}")
        tmp = broadcast_from_rank0(f"{final}.tmp-{uuid.uuid4().hex[:8]}" if _rank0() else None)
        # meta.json is taken now, not when a background save is sealed: the caller's meta (e.g.
        # its growth list) and the engine may change while the shards are written. A re-save
        # keeps the growth mark of the copy it replaces.
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
        save = _Save(self.root, step, tmp, full_meta, keep_last, shards, self._exchange)
        try:
            on_rank0(save.begin)
            barrier()
            sd, _ = sharded_state(engine, for_load=False)
            sd["common"] = {"optimizer_step": optimizer_step_count(engine.optimizer)}
            shards.write(sd, save.tmp, save.finish, save.failed)
            if shards.background:
                return save.final
            barrier()
            save.seal()
        except (OSError, CheckpointException) as err:
            save.failed(err)
            raise
        on_rank0(save.publish)
        barrier()
        return save.final


def save_checkpoint(
    engine: Engine,
    ckpt_root: str,
    step: int,
    meta: dict,
    *,
    growth: bool = False,
    keep_last: int | None = None,
) -> str:
    """One synchronous save (CheckpointWriter.save) into `ckpt_root`; returns its directory."""
    return CheckpointWriter(ckpt_root).save(engine, step, meta, growth=growth, keep_last=keep_last)


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
