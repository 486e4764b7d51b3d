"""One trainer per run directory: an OS file lock (filelock) held for the whole run.

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
from typing import Iterator

from filelock import FileLock, Timeout

from grow_megatron.config.base import ConfigError

LOCK_NAME = "train.lock"
HOLDER_NAME = "train.lock.json"


def _holder(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, HOLDER_NAME)) as f:
            h = json.load(f)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # written a moment after the lock is taken
        return "holder not recorded yet"


@contextlib.contextmanager
def run_dir_lock(run_dir: str) -> Iterator[None]:
    """Hold RUN_DIR/train.lock while the body runs; refuse at once (ConfigError) when another
    process holds it. Only a job's global rank 0 takes it, so a torchrun job is one holder and a
    second job on the same run_dir is refused at its rank 0 (torchrun then stops its workers)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    lock = FileLock(os.path.join(run_dir, LOCK_NAME))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise ConfigError("run_dir", run_dir, f"is in use by another training process ({_holder(run_dir)}): wait for "
                          "it to finish or stop it, or give this run another run_dir") from None
    holder = os.path.join(run_dir, HOLDER_NAME)
    try:
        tmp = f"{holder}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
        os.replace(tmp, holder)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(holder)
        lock.release()
