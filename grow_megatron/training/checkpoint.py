"""Checkpoints: megatron dist_checkpointing, layout-free, atomic.

Layout of RUN_DIR/checkpoints:
    step_00000120/          one complete checkpoint (dist_checkpointing dir + meta.json)
    step_00000120.tmp-*/    a save in progress or interrupted: never read, removed later
    latest                  name of the newest complete checkpoint (replaced atomically)

A checkpoint is complete only once it has been renamed from its .tmp name after every rank
finished writing, and `latest` moves only after that: a crash at any point leaves the last
good checkpoint readable.

The optimizer state is stored in model space: for every parameter's ShardedTensor in megatron's
model sharded state dict, three more with the same sharding (fp32 main copy, exp_avg,
exp_avg_sq). dist_checkpointing then reshards weights and optimizer state alike, so a
checkpoint written at one TP x PP x DP layout resumes at another.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from torch.distributed.checkpoint.api import CheckpointException

from grow_megatron.config.base import ConfigError

from grow_megatron.training.engine import Engine

if TYPE_CHECKING:
    from grow_megatron.training.async_save import AsyncSaver
from grow_megatron.training.dp_shards import param_pieces
from grow_megatron.training.optim_state import (STATE_KEYS, ensure_state_initialized, local_range, local_state,
                                                optimizer_step_count, set_step_count)

META = "meta.json"
LATEST = "latest"


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _broadcast_str(s: Optional[str]) -> Optional[str]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return s
    box = [s]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _flatten(sd: dict, out: Optional[dict] = None, prefix: str = "") -> dict:
    out = {} if out is None else out
    for k, v in sd.items():
        if isinstance(v, dict):
            _flatten(v, out, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_params(sd: dict, params: dict, prefix: str = ""):
    """(local name, containing dict, its key, ShardedTensor or factory, parameter) for every
    parameter entry of a chunk's nested sharded state dict; `params`: {id: parameter}.
    Factories: megatron splits the gated fc1 into gate and up halves for TP resharding."""
    for k, v in list(sd.items()):
        if isinstance(v, dict):
            yield from _model_params(v, params, f"{prefix}{k}.")
        elif isinstance(v, (ShardedTensor, ShardedTensorFactory)) and id(v.data) in params:
            yield f"{prefix}{k}", sd, k, v, params[id(v.data)]


def _sharded_state(engine: Engine, for_load: bool) -> tuple[dict, dict]:
    """(sharded state dict, {opt entry: (this rank's 1-d state tensor, piece list)}) for this rank's chunks.

    Every DP rank contributes, for every parameter, only its own flat range of the fp32 main
    copy and moments (training/dp_shards.py: at most three rectangles of the global tensor,
    views of the optimizer's own tensors), so a save allocates and communicates nothing for the
    optimizer state, and a load reads only the local range, straight into the optimizer. The
    weights are written the same way (each DP rank its range, from the parameter itself) and
    read whole (every DP rank needs all of its slice).

    megatron's sharded keys are global (a layer's key carries its global position), so the
    chunks of an interleaved pipeline only need distinct places in the local dict."""
    model_sd: dict[str, Any] = {}
    optim_sd: dict[str, Any] = {}
    targets: dict[str, tuple[torch.Tensor, list]] = {}
    for c, chunk in enumerate(engine.chunks):
        chunk_sd = chunk.sharded_state_dict(prefix="model.")
        model_sd[f"chunk{c}"] = chunk_sd
        for name, parent, key, sh, p in _model_params(chunk_sd, {id(p): p for p in chunk.parameters()}):
            rng = local_range(engine.optimizer, p)
            if not for_load:  # (an empty list would be saved as a common value, clashing on load)
                if rng is None:
                    del parent[key]
                else:
                    parent[key] = param_pieces(sh, p, p.detach().view(-1)[rng[0]:rng[1]], rng[0])
            if rng is None:
                continue
            state = local_state(engine.optimizer, p)
            for k in STATE_KEYS:
                # Before the first step AdamW has no moments yet: they are zero by definition.
                flat = state.get(k)
                if flat is None:
                    flat = torch.zeros(rng[1] - rng[0], dtype=torch.float32, device=p.device)
                entry = f"{k}.chunk{c}.{name}"
                optim_sd[entry] = param_pieces(sh, p, flat, rng[0], key=f"optimizer.{k}.{sh.key}")
                targets[entry] = (flat, optim_sd[entry])
    return {"model": model_sd, "optimizer": optim_sd}, targets


def list_checkpoints(ckpt_root: str) -> list[str]:
    if not os.path.isdir(ckpt_root):
        return []
    return sorted(d for d in os.listdir(ckpt_root)
                  if d.startswith("step_") and ".tmp" not in d and os.path.isfile(os.path.join(ckpt_root, d, META)))


def latest_checkpoint(ckpt_root: str) -> Optional[str]:
    """Path of the newest complete checkpoint, or None."""
    path = os.path.join(ckpt_root, LATEST)
    if os.path.isfile(path):
        with open(path) as f:
            name = f.read().strip()
        if os.path.isfile(os.path.join(ckpt_root, name, META)):
            return os.path.join(ckpt_root, name)
    found = list_checkpoints(ckpt_root)
    return os.path.join(ckpt_root, found[-1]) if found else None


def save_checkpoint(engine: Engine, ckpt_root: str, step: int, meta: dict, keep: Optional[set[str]] = None,
                    keep_last: Optional[int] = None, saver: Optional["AsyncSaver"] = None) -> str:
    """Save the engine after `step` completed steps; returns the checkpoint directory.
    saver: write asynchronously (training/async_save.py); the directory appears once published."""
    if saver is not None:  # --- async save hook: one in flight; its publish prunes .tmp-* dirs
        saver.wait()
    name = f"step_{step:08d}"
    final = os.path.join(ckpt_root, name)
    tmp = _broadcast_str(f"{final}.tmp-{uuid.uuid4().hex[:8]}" if _rank0() else None)
    if _rank0():
        os.makedirs(tmp, exist_ok=True)
    _barrier()
    sd, _ = _sharded_state(engine, for_load=False)
    sd["common"] = {"optimizer_step": optimizer_step_count(engine.optimizer)}
    full_meta = {**meta, "step": step, "depth": engine.depth, "split": list(engine.split)}
    # --- async save hook: the rest of the sequence (publish) runs once every rank's writer finished.
    if saver is not None:
        saver.submit(dist_checkpointing.save(sd, tmp, async_sharded_save=True),
                     lambda: _publish(tmp, final, name, ckpt_root, full_meta, keep, keep_last))
        return final
    dist_checkpointing.save(sd, tmp)
    _publish(tmp, final, name, ckpt_root, full_meta, keep, keep_last)
    return final


def _publish(tmp: str, final: str, name: str, ckpt_root: str, full_meta: dict, keep: Optional[set[str]],
             keep_last: Optional[int]) -> None:
    _barrier()
    if _rank0():
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(full_meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        latest_tmp = os.path.join(ckpt_root, f".{LATEST}.tmp")
        with open(latest_tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, os.path.join(ckpt_root, LATEST))
        _prune(ckpt_root, keep or set(), keep_last)
    _barrier()


def _prune(ckpt_root: str, keep: set[str], keep_last: Optional[int]) -> None:
    for d in os.listdir(ckpt_root):
        if ".tmp-" in d:  # an interrupted save
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    if keep_last is None:
        return
    complete = list_checkpoints(ckpt_root)
    removable = [d for d in complete if d not in keep]
    for d in removable[:-keep_last] if keep_last else []:
        shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


def unreadable_checkpoint(ckpt_dir: str, err: BaseException) -> ConfigError:
    """A checkpoint whose files cannot be parsed (truncated copy, disk full during a manual copy,
    edited meta.json): one line naming it and the way out, not torch's multi-line traceback."""
    failures = getattr(err, "failures", None)  # DCP's CheckpointException wraps each rank's error
    if failures:
        err = next(iter(failures.values()))
        if isinstance(err, tuple):  # (exception, traceback summary)
            err = err[0]
    first = (str(err).strip().splitlines() or [""])[0][:200]
    why = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return ConfigError("checkpoint", ckpt_dir, f"cannot be read, its files are truncated or corrupted "
                                               f"({why}): use an earlier checkpoints/step_* (training resumes "
                                               "from the newest complete one once this one is moved away)")


def tensor_specs(ckpt_dir: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every global tensor of a checkpoint (weights and optimizer state),
    from its metadata: whatever TP x PP x DP layout wrote it, a tensor has one global shape."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        md = FileSystemReader(ckpt_dir).read_metadata()
    except Exception as err:  # noqa: BLE001 - any failure to parse a user's file is reported, not raised
        raise unreadable_checkpoint(ckpt_dir, err) from err
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def read_global_tensors(ckpt_dir: str, specs: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Whole global tensors by key (`specs` as tensor_specs gives them; default all), read in
    one process without a process group: DCP reassembles the shards of any layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    specs = tensor_specs(ckpt_dir) if specs is None else specs
    out = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in specs.items()}
    try:
        dcp.load(out, storage_reader=FileSystemReader(ckpt_dir), no_dist=True)
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated .distcp fails anywhere in torch
        raise unreadable_checkpoint(ckpt_dir, err) from err
    return out


def read_meta(ckpt_dir: str) -> dict:
    try:
        with open(os.path.join(ckpt_dir, META)) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as err:  # a truncated or hand-edited meta.json
        raise unreadable_checkpoint(ckpt_dir, err) from err


def load_checkpoint(engine: Engine, ckpt_dir: str) -> dict:
    """Load weights and optimizer state into an engine of the checkpoint's depth."""
    meta = read_meta(ckpt_dir)
    if meta["depth"] != engine.depth:
        raise ValueError(f"checkpoint {ckpt_dir} holds depth {meta['depth']}, engine has {engine.depth}")
    ensure_state_initialized(engine.optimizer)
    sd, targets = _sharded_state(engine, for_load=True)
    sd["common"] = {"optimizer_step": 0}
    with torch.no_grad():
        try:
            loaded = dist_checkpointing.load(sd, ckpt_dir)
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated .distcp fails anywhere in torch
            raise unreadable_checkpoint(ckpt_dir, err) from err
        for c, chunk in enumerate(engine.chunks):
            chunk.load_state_dict(_unflatten_model(loaded["model"][f"chunk{c}"]), strict=False)
        for entry, (flat, requested) in targets.items():
            # DCP reads into the requested pieces, which are views of the optimizer's tensors;
            # copy what came back in case a backend returned new tensors.
            for want, got in zip(requested, loaded["optimizer"][entry]):
                if got.data_ptr() != want.data.data_ptr():
                    want.data.copy_(got.view_as(want.data))
    set_step_count(engine.optimizer, int(loaded["common"]["optimizer_step"]))
    return meta


def _unflatten_model(model_sd: dict) -> dict:
    """Loaded `model.`-prefixed entries back to the module's state-dict names."""
    return {k[len("model."):]: v for k, v in _flatten(model_sd).items() if torch.is_tensor(v)}
