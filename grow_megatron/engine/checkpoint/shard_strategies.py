"""Asynchronous checkpoint saves (`checkpoint.async_save: on`), on megatron's async machinery.

A save is planned and staged on the training thread (megatron's writer copies what this rank
writes to host memory: device tensors to the host, CPU views cloned), then a forked process
writes the files while training continues; the fork sees the state as it was when the save
started. The checkpoint is published (meta.json, rename from .tmp, `latest`) by the same
code as a synchronous save, as a finalize step that runs only once *every* rank's writer
finished: megatron's finalization all-gathers the write results and raises on all ranks if
any writer failed, so a failed or killed writer leaves the previous checkpoint as `latest`.

At most one save is in flight: submitting another first waits for the running one. `poll`
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

from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest
from torch.distributed.checkpoint.api import CheckpointException

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


class AsyncSaver:
    """One rank's handle on its in-flight checkpoint save (every rank holds one)."""

    def __init__(self) -> None:
        self._queue = AsyncCallsQueue(persistent=False)

    def submit(
        self,
        request: AsyncRequest,
        publish: Callable[[], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Start writing `request` (from dist_checkpointing.save(..., async_sharded_save=True));
        `publish` runs on every rank once all of them finished writing. `on_error` sees a
        failed write or publish first (on every rank, at the poll or wait that finds it) and
        may raise in its place (save_checkpoint: a full disk in one line)."""
        self.wait()
        steps = [*request.finalize_fns, publish]

        def finalize() -> None:
            try:
                for fn in steps:
                    fn()
            except (OSError, CheckpointException) as err:
                if on_error is not None:
                    on_error(err)
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
