"""One trainer per run directory: an OS file lock (filelock) held for the whole run; and a
run directory that must not be resumed, refused or archived before any work (prepare_run_dir).

Two trainers on one run_dir would prune each other's interrupted saves, resume from each
other's checkpoints and rewrite each other's metrics and config.yaml. The lock is the
operating system's (flock), so it dies with its holder, however that dies (SIGKILL, OOM
killer, a node losing power): a stale lock cannot block the next run. Who holds it (pid,
host, since when) sits next to it in RUN_DIR/train.lock.json, for the refusal message only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

from filelock import FileLock, Timeout

from grow_megatron.config.base import ConfigError, RunEnvironmentError
from grow_megatron.config.rundir import ARCHIVE_PREFIX, RunDir
from grow_megatron.engine.checkpoint import LATEST, fsync_dir, list_checkpoints
from grow_megatron.engine.distributed import barrier, on_rank0


def _holder(run_dir: str) -> str:
    try:
        with open(RunDir(run_dir).lock_holder) as f:
            h = json.load(f)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # written a moment after the lock is taken
        return "holder not recorded yet"


@contextlib.contextmanager
def run_dir_lock(run_dir: str) -> Iterator[None]:
    """Hold RUN_DIR/train.lock while the body runs; refuse at once (RunEnvironmentError) when another
    process holds it. Only a job's global rank 0 takes it, so a torchrun job is one holder and a
    second job on the same run_dir is refused at its rank 0 (torchrun then stops its workers)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    lock = FileLock(RunDir(run_dir).lock)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise RunEnvironmentError(
            "run_dir",
            run_dir,
            f"is in use by another training process ({_holder(run_dir)}): wait for "
            "it to finish or stop it, or give this run another run_dir",
        ) from None
    holder = RunDir(run_dir).lock_holder
    try:
        tmp = f"{holder}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                f,
            )
        os.replace(tmp, holder)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(holder)
        lock.release()


def prepare_run_dir(run_dir: str, resume: str) -> None:
    """Before any work: a run that must not resume (resume never/fresh) may not share its
    run_dir with an earlier run: its checkpoints would sort among the old ones (pruned at once,
    or picked by a later auto-resume). `never` refuses; `fresh` moves the old run's outputs to
    run_dir/archive-<UTC time>/ (rank 0; every rank waits for it)."""
    if resume == "auto":
        return
    rd = RunDir(run_dir)
    root = rd.checkpoints
    used = [
        p
        for p in (os.path.join(root, LATEST), *(os.path.join(root, d) for d in list_checkpoints(root)), rd.metrics)
        if os.path.exists(p)
    ]
    if not used:
        return
    if resume == "never":
        raise ConfigError(
            "checkpoint.resume",
            resume,
            f"{run_dir} already holds a run ({os.path.relpath(used[-1], run_dir)}): use another run_dir, "
            f"checkpoint.resume=auto to continue it, or checkpoint.resume=fresh to move it to "
            f"{run_dir}/{ARCHIVE_PREFIX}<time>/ and start over",
        )

    def archive():
        rd.archive()
        fsync_dir(run_dir)

    on_rank0(archive)
    barrier()
