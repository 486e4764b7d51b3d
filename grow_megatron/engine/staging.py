"""Output directories published whole (`grow-megatron grow`'s new run, `convert to-hf`'s export).

A command writes its output under a staging name beside it, `OUT.incomplete-<id>`, and renames
it to OUT only once everything is in it, so a kill at any moment leaves either no OUT or a
complete one: never a half one that `train OUT/config.yaml` or transformers would read as
complete. A staging directory left by a killed run is found by the next run into the same OUT
(`leftovers`), which names it and removes it. Replacing an existing OUT swaps the two
directories in one renameat2(RENAME_EXCHANGE) where the OS offers it (engine/checkpoint/ re-saves a
step the same way), so a complete OUT exists at every instant.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator

STAGING = ".incomplete-"


def exchange_dirs(a: str, b: str) -> bool:
    """Atomically swap two directory entries (Linux renameat2 RENAME_EXCHANGE); False where the
    OS or file system cannot (then nothing was changed)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftovers(out: str) -> list[str]:
    """Staging directories of OUT that a killed run left behind."""
    out = os.path.abspath(out)
    parent, name = os.path.split(out)
    if not os.path.isdir(parent):
        return []
    return sorted(os.path.join(parent, d) for d in os.listdir(parent) if d.startswith(name + STAGING))


def remove_leftovers(out: str) -> list[str]:
    """Remove (and return, for the caller to name) what killed runs into OUT left."""
    found = leftovers(out)
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


@contextlib.contextmanager
def staged_dir(out: str, replace: bool = False, before_publish: Callable[[], None] | None = None) -> Iterator[str]:
    """Yield a new, empty staging directory beside OUT; when the block completes, it becomes OUT
    by one rename. OUT must not exist or be an empty directory, unless `replace` (then the old
    OUT is swapped out and removed). An error in the block removes the staging directory; a
    kill leaves it (named `OUT.incomplete-*`, found by `leftovers`). `before_publish` runs right
    before the rename (the fault hooks' place)."""
    out = os.path.abspath(out)
    stage = f"{out}{STAGING}{uuid.uuid4().hex[:8]}"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    os.makedirs(stage)
    try:
        yield stage
        _fsync_dir(stage)
        if before_publish is not None:
            before_publish()
        old = None
        if replace and os.path.isdir(out) and os.listdir(out):
            if exchange_dirs(stage, out):
                old = stage  # now holds the old OUT
            else:
                old = f"{out}.old-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
                os.replace(stage, out)
        else:
            os.replace(stage, out)  # replaces an empty directory; refuses a non-empty one
        _fsync_dir(os.path.dirname(out))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception:
        shutil.rmtree(stage, ignore_errors=True)
        raise
