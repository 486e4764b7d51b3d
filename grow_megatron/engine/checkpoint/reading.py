"""Reading a checkpoint: its meta.json (checked), the shape and dtype of its tensors, whole
global tensors in one process, and a verified load into an engine of any layout; a file that
cannot be read is diagnosed in one line (removed under the reader, damaged, or written for
another model)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import torch
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from grow_megatron.config.base import CheckpointError, ConfigError
from grow_megatron.config.rundir import CHECKPOINTS, CONFIG
from grow_megatron.engine.checkpoint.integrity import MANIFEST, META, pruned_under_reader, verifying
from grow_megatron.engine.checkpoint.optim_state import ensure_state_initialized, set_step_count
from grow_megatron.engine.checkpoint.sharded_state import sharded_state, unflatten_model
from grow_megatron.engine.distributed import broadcast_from_rank0, gather_on_rank0, rank

if TYPE_CHECKING:
    from grow_megatron.engine.build import Engine

# meta.json keys readers rely on: (type, required, what it is); bool is not an int here.
META_SCHEMA: dict[str, tuple[type, bool, str]] = {
    "step": (int, True, "a non-negative integer: the number of completed steps"),
    "depth": (int, True, "a positive integer: the number of transformer layers"),
    "split": (list, True, "a list of layers per pipeline stage"),
    "growths": (list, False, "a list of growth events"),
    "growth_checkpoint": (bool, False, "true or false"),
}


def _vanished(err: BaseException) -> bool:
    """Whether `err` (or a failure DCP wrapped in it) is a file that is not there."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FileNotFoundError):
            return True
        todo.extend([e.__cause__, e.__context__])
        for failure in (getattr(e, "failures", None) or {}).values():
            todo.extend(failure if isinstance(failure, tuple) else [failure])
    return False


def unreadable_checkpoint(ckpt_dir: str, err: BaseException) -> CheckpointError:
    """A checkpoint whose files cannot be read, diagnosed: removed under the reader (pruned by
    a live trainer), a meta.json or files that do not parse (damage: truncated copy, hand edit),
    or files that verify but do not fit the reader. One line naming it and the way out, not
    torch's multi-line traceback. (A model of another shape is named before any read:
    `check_shapes`; damage in a checkpoint with a manifest is named by verification.)"""
    if not os.path.isdir(ckpt_dir) or _vanished(err):
        return pruned_under_reader(ckpt_dir)
    failures = getattr(err, "failures", None)  # DCP's CheckpointException wraps each rank's error
    if failures:
        err = next(iter(failures.values()))
        if isinstance(err, tuple):  # (exception, traceback summary)
            err = err[0]
    first = (str(err).strip().splitlines() or [""])[0][:200]
    why = f"{type(err).__name__}: {first}" if first else type(err).__name__
    if os.path.isfile(os.path.join(ckpt_dir, MANIFEST)) and os.path.isfile(os.path.join(ckpt_dir, META)):
        return CheckpointError(
            "checkpoint",
            ckpt_dir,
            f"cannot be read by this reader ({why}) although its files are "
            f"the ones written (its {MANIFEST} verifies): it does not fit what "
            f"is read (another model config or grow_megatron version?); read "
            f"it with the config it was trained with (its run's {CONFIG})",
        )
    return CheckpointError(
        "checkpoint",
        ckpt_dir,
        f"cannot be read, its files are truncated or corrupted "
        f"({why}): use an earlier {CHECKPOINTS}/step_* (training resumes "
        "from the newest complete one once this one is moved away)",
    )


def check_shapes(sd: dict, ckpt_dir: str) -> None:
    """Before a load: every tensor the engine asks for is in the checkpoint with the same
    global shape. A model of another shape (a changed model.hidden_size, num_layers, ...) is
    a config mismatch, named as one; DCP would report it as an unreadable file."""
    stored = tensor_specs(ckpt_dir)
    mismatch = None
    for key, shape in sorted(_requested_shapes(sd).items()):
        have = stored.get(key)
        if have is None or tuple(have[0]) != shape:
            held = f"holds {key} with shape {list(have[0])}" if have is not None else f"holds no {key}"
            mismatch = (held, list(shape))
            break
    # Each pipeline rank asks for its own layers: all ranks agree before the collective load.
    found = [m for m in gather_on_rank0(mismatch) if m is not None]
    mismatch = broadcast_from_rank0(found[0] if found else None)
    if mismatch is not None:
        raise ConfigError(
            "checkpoint",
            ckpt_dir,
            f"{mismatch[0]}, but this config's model needs shape {mismatch[1]}: "
            f"the checkpoint was trained with another model config (model.* "
            f"shape fields); nothing is damaged: use the config it was trained "
            f"with (its run's {CONFIG}), or another run_dir for this model",
        )


def _requested_shapes(obj, out: dict | None = None) -> dict[str, tuple[int, ...]]:
    """{key: global shape} of every ShardedTensor in a (nested) sharded state dict."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for v in obj.values():
            _requested_shapes(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _requested_shapes(v, out)
    elif isinstance(obj, ShardedTensor):
        out[obj.key] = tuple(obj.global_shape)
    return out


def tensor_specs(ckpt_dir: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every global tensor of a checkpoint (weights and optimizer state),
    from its metadata: whatever TP x PP x DP layout wrote it, a tensor has one global shape."""
    try:
        md = FileSystemReader(ckpt_dir).read_metadata()
    except Exception as err:  # noqa: BLE001 - any failure to parse a user's file is reported, not raised
        raise unreadable_checkpoint(ckpt_dir, err) from err
    return {
        k: (tuple(v.size), v.properties.dtype)
        for k, v in md.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
    }


def read_global_tensors(ckpt_dir: str, specs: dict | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
    """Whole global tensors by key (`specs` as tensor_specs gives them; default all), read in
    one process without a process group: DCP reassembles the shards of any layout. `verify`
    checks the files against the manifest first (readers that read key by key verify once)."""
    wanted = None if specs is None else set(specs).__contains__
    with verifying(ckpt_dir, enabled=verify, keys=wanted):
        specs = tensor_specs(ckpt_dir) if specs is None else specs
        out = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in specs.items()}
        try:
            dcp.load(out, storage_reader=FileSystemReader(ckpt_dir), no_dist=True)
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated .distcp fails anywhere in torch
            raise unreadable_checkpoint(ckpt_dir, err) from err
    return out


def read_meta(ckpt_dir: str) -> dict:
    """meta.json, checked: a missing key or a value of the wrong type is named in one line."""
    path = os.path.join(ckpt_dir, META)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:  # a truncated or hand-edited meta.json
        raise unreadable_checkpoint(ckpt_dir, err) from err
    if not isinstance(meta, dict):
        raise CheckpointError(
            path, type(meta).__name__, f"must hold a JSON object: restore it or use an earlier {CHECKPOINTS}/step_*"
        )
    for key, (tp, required, what) in META_SCHEMA.items():
        if key not in meta and not required:
            continue
        if key not in meta:
            raise CheckpointError(
                f"{path}: {key}",
                "<missing>",
                f"must be {what}: restore the file or use an earlier {CHECKPOINTS}/step_*",
            )
        value = meta[key]
        if not isinstance(value, tp) or (tp is int and (isinstance(value, bool) or value < (key == "depth"))):
            raise CheckpointError(
                f"{path}: {key}", value, f"must be {what}: restore the file or use an earlier {CHECKPOINTS}/step_*"
            )
    return meta


def _load_verified(sd: dict, ckpt_dir: str) -> dict:
    """dist_checkpointing.load, with rank 0 verifying the files meanwhile (one pass over them,
    not one per rank) and every rank raising its verdict before anything loaded is used."""
    failure = None
    try:
        with verifying(ckpt_dir, enabled=rank() == 0):
            try:
                loaded = dist_checkpointing.load(sd, ckpt_dir)
            except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated .distcp fails anywhere in torch
                raise unreadable_checkpoint(ckpt_dir, err) from err
    except CheckpointError as err:
        failure = (err.path, err.value, err.allowed)
    # Rank 0's verdict reaches every rank; a reader error (DCP raises it on every rank) stays.
    verdict = broadcast_from_rank0(failure)
    if failure is not None or verdict is not None:
        raise CheckpointError(*(failure or verdict))
    return loaded


def load_checkpoint(engine: Engine, ckpt_dir: str) -> dict:
    """Load weights and optimizer state into an engine of the checkpoint's depth."""
    meta = read_meta(ckpt_dir)
    if meta["depth"] != engine.depth:
        raise ValueError(f"checkpoint {ckpt_dir} holds depth {meta['depth']}, engine has {engine.depth}")
    ensure_state_initialized(engine.optimizer)
    sd, targets = sharded_state(engine, for_load=True)
    check_shapes(sd, ckpt_dir)
    sd["common"] = {"optimizer_step": 0}
    with torch.no_grad():
        loaded = _load_verified(sd, ckpt_dir)
        for c, chunk in enumerate(engine.chunks):
            chunk.load_state_dict(unflatten_model(loaded["model"][f"chunk{c}"]), strict=False)
        for entry, (_flat, requested) in targets.items():
            # DCP reads into the requested pieces, which are views of the optimizer's tensors;
            # copy what came back in case a backend returned new tensors.
            for want, got in zip(requested, loaded["optimizer"][entry]):
                if got.data_ptr() != want.data.data_ptr():
                    want.data.copy_(got.view_as(want.data))
    set_step_count(engine.optimizer, int(loaded["common"]["optimizer_step"]))
    return meta
