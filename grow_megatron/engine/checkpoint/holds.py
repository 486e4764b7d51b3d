"""A reader's hold on a checkpoint: hard links that keep its files readable while a trainer
prunes or re-saves it (convert, eval and analyze read checkpoints of a running trainer)."""

from __future__ import annotations

import os
import shutil
import socket
import uuid

from grow_megatron.engine.checkpoint.integrity import META

HELD = ".held-"
"""Prefix of a reader's hold on a checkpoint (hold_checkpoint): `.held-<host>-<pid>-<id>-<step>`."""


class CheckpointGone(Exception):
    """The checkpoint to hold was removed (pruned) before all of its files were held."""


def _hold_owner_alive(name: str) -> bool:
    """Whether the reader that made hold `name` may still run (another host: assume so)."""
    parts = name[len(HELD) :].split("-")  # host, pid, id, step name
    if len(parts) != 4 or parts[0] != socket.gethostname().replace("-", "_"):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _drop_dead_holds(ckpt_root: str) -> None:
    """Remove the holds of readers that died (SIGKILL) without releasing them."""
    for d in os.listdir(ckpt_root):
        if d.startswith(HELD) and not _hold_owner_alive(d):
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


def hold_checkpoint(ckpt_dir: str) -> str | None:
    """A reader's own copy of a checkpoint's directory entries: hard links to its files in
    `<checkpoints>/.held-*`, so a trainer pruning (removing) the checkpoint meanwhile cannot
    pull the files away from the reader; it costs no copy and no space until the original is
    removed. Returns the held directory (release it with release_checkpoint), or None where
    links cannot be made there (read-only or foreign file system: read in place). Raises
    CheckpointGone when the checkpoint was removed before everything was held.

    Files are linked through a descriptor of the checkpoint directory: a re-save that
    exchanges the directory with a new copy meanwhile cannot mix the two copies."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    root, name = os.path.split(ckpt_dir)
    host = socket.gethostname().replace("-", "_")
    held = os.path.join(root, f"{HELD}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")
    try:
        _drop_dead_holds(root)
        fd = os.open(ckpt_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise CheckpointGone(ckpt_dir) from None
    except OSError:
        return None
    try:
        os.mkdir(held)
        for entry in os.listdir(fd):
            os.link(entry, os.path.join(held, entry), src_dir_fd=fd, follow_symlinks=False)
        if not os.path.isfile(os.path.join(held, META)):
            raise FileNotFoundError(os.path.join(ckpt_dir, META))
    except FileNotFoundError:
        shutil.rmtree(held, ignore_errors=True)
        raise CheckpointGone(ckpt_dir) from None
    except OSError:  # no hard links here (EPERM, EXDEV, EROFS, a subdirectory, ...): read in place
        shutil.rmtree(held, ignore_errors=True)
        return None
    finally:
        os.close(fd)
    return held


def release_checkpoint(held: str | None) -> None:
    """Drop a hold (hold_checkpoint); the original files stay as they are."""
    if held:
        shutil.rmtree(held, ignore_errors=True)
