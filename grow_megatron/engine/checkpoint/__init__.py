"""Checkpoint storage: megatron dist_checkpointing, layout-free, atomic, verified.

Layout of RUN_DIR/checkpoints:
    step_00000120/          one complete checkpoint: dist_checkpointing files, meta.json and
                            manifest.json (size + digest of every other file, see integrity.py)
    step_00000120.tmp-*/    a save in progress or interrupted: never read, removed by the next save
    step_00000120.old-*/    the previous copy of a re-saved step, during the swap (rename fallback)
    .held-*/                a reader's hold on a checkpoint (holds.py)
    latest                  name of the newest complete checkpoint (replaced atomically)

A checkpoint is complete only once every rank wrote its shards, meta.json and manifest.json
were written and synced, and the directory was renamed from its .tmp name; `latest` moves only
after that. Re-saving a step that exists (every resume from a growth checkpoint, every re-run
of a finished run) swaps the new directory with the old one in one atomic renameat2
(RENAME_EXCHANGE) where the OS offers it, so a complete step_N exists at every instant; where
it does not, the old copy is renamed aside first and `latest_checkpoint` (and the next save)
fall back to it if the process dies in between. Every step of this sequence is a named fault
point (engine/faults.py), and tests kill the process at each.

Tensors are written by torch.distributed.checkpoint's FileSystemWriter (torch_dist.py): in
the saving processes themselves, or for an async save in one forked process per rank that
dies with the trainer; megatron's default writer starts a multiprocessing Manager and forked
writers, which die with a SIGTERM to the process group (Slurm, torchrun) and outlive a
SIGKILLed trainer, and clones every tensor view on the training thread first.

Modules, from the bottom:
    keys.py             the checkpoint key format (its one owner: tests/test_owners.py)
    integrity.py        manifest.json: digests written at a save, verified while loading
    directory.py        what a checkpoint root holds: step names, `latest`, leftovers
    holds.py            a reader's hard-link hold on a checkpoint that a trainer may prune
    dp_shards.py        a DP rank's flat range of a parameter as rectangular pieces
    optim_state.py      per-parameter optimizer state in model space (growth, checkpoints)
    sharded_state.py    an engine as megatron's sharded state dict (weights + optimizer state)
    reading.py          meta.json, tensor specs, whole global tensors, a verified load
    torch_dist.py       megatron's torch_dist format written by DCP (in process, or forked)
    shard_strategies.py who writes a save's shards: this process, or a forked one per rank
    writer.py           CheckpointWriter: the one save sequence (begin, shards, seal, publish)

The names below are this package's API for the rest of grow_megatron. Those whose modules
import megatron-core (seconds) are imported on first use, so that what reads checkpoints
without a model (convert, and eval and analyze of a Hugging Face directory) never imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from grow_megatron.engine.checkpoint.directory import LATEST, latest_checkpoint, list_checkpoints, unreadable_leftovers
from grow_megatron.engine.checkpoint.holds import CheckpointGone, hold_checkpoint, release_checkpoint
from grow_megatron.engine.checkpoint.integrity import (
    MANIFEST,
    META,
    file_digest,
    fsync_dir,
    pruned_under_reader,
    verify_checkpoint,
)

if TYPE_CHECKING:  # the same names as _ON_FIRST_USE, for readers and static tools
    from grow_megatron.engine.checkpoint.optim_state import (
        dp_span_tables,
        ensure_state_initialized,
        gather_param_state,
        local_state,
        nonfinite_state,
        optimizer_step_count,
        own_state,
        scatter_param_state,
        set_step_count,
    )
    from grow_megatron.engine.checkpoint.reading import (
        load_checkpoint,
        read_global_tensors,
        read_meta,
        tensor_specs,
    )
    from grow_megatron.engine.checkpoint.writer import CheckpointWriter, save_checkpoint

_ON_FIRST_USE = {
    "optim_state": (
        "dp_span_tables",
        "ensure_state_initialized",
        "gather_param_state",
        "local_state",
        "nonfinite_state",
        "optimizer_step_count",
        "own_state",
        "scatter_param_state",
        "set_step_count",
    ),
    "reading": ("load_checkpoint", "read_global_tensors", "read_meta", "tensor_specs"),
    "writer": ("CheckpointWriter", "save_checkpoint"),
}
"""The API whose modules import megatron-core: {module: names}."""

__all__ = [
    "LATEST",
    "MANIFEST",
    "META",
    "CheckpointGone",
    "file_digest",
    "fsync_dir",
    "hold_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "pruned_under_reader",
    "release_checkpoint",
    "unreadable_leftovers",
    "verify_checkpoint",
    "dp_span_tables",
    "ensure_state_initialized",
    "gather_param_state",
    "local_state",
    "nonfinite_state",
    "optimizer_step_count",
    "own_state",
    "scatter_param_state",
    "set_step_count",
    "load_checkpoint",
    "read_global_tensors",
    "read_meta",
    "tensor_specs",
    "CheckpointWriter",
    "save_checkpoint",
]


def __getattr__(name: str):
    for module, names in _ON_FIRST_USE.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
