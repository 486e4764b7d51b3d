"""How a save's shards get written: the two strategies of writer.py's CheckpointWriter.

`SyncShards`: in the saving process; the save returns once the checkpoint is published.

`AsyncShards` (`checkpoint.async_save: on`), on megatron's async machinery: a save is planned
and staged on the training thread (torch_dist.py copies what this rank writes to host memory:
device tensors to the host, CPU views stay), then a forked process writes the files while
training continues; the fork sees the state as it was when the save started. The checkpoint
is sealed and published (meta.json, manifest, rename from .tmp, `latest`) by the same
sequence as a synchronous save, as a finalize step that runs only once *every* rank's writer
finished: the finalization gathers the write results and raises on all ranks if any writer
failed, so a failed or killed writer leaves the previous checkpoint as `latest`.

At most one save is in flight: starting another first waits for the running one. `poll`
(every step) publishes a finished save; it is a one-integer all-reduce, so every rank calls it
at the same steps. The training loop waits for the running save before its final save and
on a stop (Ctrl-C, SIGTERM).

Fault injection (tests): GROW_MEGATRON_FAULT=save.writer (engine/faults.py) makes the forked
writer exit before writing anything, as a writer killed mid-save would.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from typing import Protocol

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from torch.distributed.checkpoint.api import CheckpointException

from grow_megatron.engine.checkpoint.torch_dist import DirectSaveStrategy
from grow_megatron.engine.distributed import signal_on_parent_death


def _bound_writer(async_fn: Callable, trainer_pid: int, *args, **kwargs) -> None:
    """Runs in the forked writer. It must not outlive a SIGKILLed trainer (docs/reliability.md):
    on Linux the kernel kills it when its parent dies, and it exits at once if the trainer died
    before that request was in place. A SIGTERM or Ctrl-C to the process group (Slurm,
    torchrun) is the trainer's to handle: its clean stop waits for this save, so the writer
    ignores them and finishes."""
    signal_on_parent_death(signal.SIGKILL)
    if os.getppid() != trainer_pid:
        os._exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    async_fn(*args, **kwargs)


class ShardStrategy(Protocol):
    """Who writes a save's shards, and when the rest of the save runs (CheckpointWriter)."""

    background: bool
    """False: the shards are on disk when `write` returns and the writer seals and publishes
    at once. True: `write` only starts them; `finish` (seal and publish) runs later."""

    def write(
        self,
        sharded_state_dict: dict,
        checkpoint_dir: str,
        finish: Callable[[dict | None], None],
        failed: Callable[[BaseException], None],
    ) -> None: ...

    def poll(self) -> None: ...

    def wait(self) -> None: ...


class SyncShards:
    """Shards written by the saving process itself, before `write` returns."""

    background = False
    """The writer seals and publishes the save itself, right after `write`."""

    def write(
        self,
        sharded_state_dict: dict,
        checkpoint_dir: str,
        finish: Callable[[dict | None], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Write this rank's shards into `checkpoint_dir` (`finish` and `failed` are the
        background strategy's: the writer runs the rest of the sequence after this returns)."""
        dist_checkpointing.save(sharded_state_dict, checkpoint_dir, sharded_strategy=DirectSaveStrategy())

    def poll(self) -> None:
        """Nothing is ever in flight."""

    def wait(self) -> None:
        """Nothing is ever in flight."""


class AsyncShards:
    """One rank's handle on its in-flight background save (every rank holds one)."""

    background = True
    """`write` returns once the writer process started; `finish` seals and publishes later."""

    def __init__(self) -> None:
        self._queue = AsyncCallsQueue(persistent=False)

    def write(
        self,
        sharded_state_dict: dict,
        checkpoint_dir: str,
        finish: Callable[[dict | None], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Start writing this rank's shards into `checkpoint_dir` in a forked process. `finish`
        runs on every rank once all of them finished writing, with this rank's manifest
        entries (the writer digested what it wrote). `failed` sees a failed write or finish
        first (on every rank, at the poll or wait that finds it) and may raise in its place
        (the writer: a full disk in one line). The writer waits for the save in flight first."""
        strategy = DirectSaveStrategy()
        request = dist_checkpointing.save(
            sharded_state_dict, checkpoint_dir, sharded_strategy=strategy, async_sharded_save=True
        )
        steps = [*request.finalize_fns, lambda: finish(strategy.digests)]

        def finalize() -> None:
            try:
                for fn in steps:
                    fn()
            except (OSError, CheckpointException) as err:
                failed(err)
                raise

        request = request._replace(finalize_fns=[finalize])
        request = request._replace(async_fn=functools.partial(_bound_writer, request.async_fn, os.getpid()))
        self._queue.schedule_async_request(request)

    @property
    def in_flight(self) -> bool:
        return self._queue.get_num_unfinalized_calls() > 0

    def poll(self) -> None:
        """Publish the running save if every rank finished writing it (a collective)."""
        if self.in_flight:
            self._queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Block until the running save (if any) is written and published."""
        if self.in_flight:
            self._queue.maybe_finalize_async_calls(blocking=True)
