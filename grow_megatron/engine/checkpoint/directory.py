"""What a checkpoint root holds: the step directories, `latest`, and what an interrupted save
or a lost checkpoint leaves (the layout is described in this package's __init__)."""

from __future__ import annotations

import json
import os
import re

from grow_megatron.engine.checkpoint.integrity import META

LATEST = "latest"
_STEP_DIR = re.compile(r"step_\d+")


def list_checkpoints(ckpt_root: str) -> list[str]:
    if not os.path.isdir(ckpt_root):
        return []
    return sorted(
        d for d in os.listdir(ckpt_root) if _STEP_DIR.fullmatch(d) and os.path.isfile(os.path.join(ckpt_root, d, META))
    )


def _aside_copy(ckpt_root: str, name: str) -> str | None:
    """The complete old copy of step `name` left by a re-save killed between moving it aside
    and renaming the new one into place (rename fallback only)."""
    if not os.path.isdir(ckpt_root):
        return None
    for d in sorted(os.listdir(ckpt_root)):
        if d.startswith(f"{name}.old-") and os.path.isfile(os.path.join(ckpt_root, d, META)):
            return os.path.join(ckpt_root, d)
    return None


def latest_checkpoint(ckpt_root: str) -> str | None:
    """Path of the newest complete checkpoint, or None."""
    path = os.path.join(ckpt_root, LATEST)
    if os.path.isfile(path):
        with open(path) as f:
            name = f.read().strip()
        if os.path.isfile(os.path.join(ckpt_root, name, META)):
            return os.path.join(ckpt_root, name)
        aside = _aside_copy(ckpt_root, name)
        if aside is not None:
            return aside
    found = list_checkpoints(ckpt_root)
    return os.path.join(ckpt_root, found[-1]) if found else None


def unreadable_leftovers(ckpt_root: str) -> str | None:
    """What shows that `ckpt_root` held checkpoints when none of them is complete and readable
    now (`latest` naming a step that is gone, step directories without meta.json), or None
    for a run that never wrote one. A resume must not start such a run over from step 0."""
    if not os.path.isdir(ckpt_root):
        return None
    signs = []
    latest = os.path.join(ckpt_root, LATEST)
    if os.path.isfile(latest):
        with open(latest) as f:
            signs.append(f"{LATEST} names {f.read().strip() or 'nothing'}")
    steps = sorted(d for d in os.listdir(ckpt_root) if _STEP_DIR.fullmatch(d.split(".")[0]) and ".tmp-" not in d)
    if steps:
        signs.append(f"{', '.join(steps)} without a readable {META}")
    return "; ".join(signs) or None


def is_growth_checkpoint(ckpt_dir: str) -> bool:
    try:
        with open(os.path.join(ckpt_dir, META)) as f:
            return bool(json.load(f).get("growth_checkpoint", False))
    except (OSError, ValueError, AttributeError):
        return False
