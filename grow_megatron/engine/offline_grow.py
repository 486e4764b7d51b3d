"""Growth through a checkpoint (docs/architecture.md, "Growth"): grow a model on disk.

A checkpoint stores every layer parameter, and its fp32 main copy and AdamW moments, as one
global tensor with a leading layer axis (megatron's sharded format, reassembled from whatever
TP x PP x DP layout wrote it). Growing is then `index_select(0, source_map)` on each of them,
plus zeroed output projections at the new positions for a function-preserving operator.

Two uses: a user grows a trained checkpoint (e.g. a static model) and keeps training the
deeper model from it, with its optimizer state and step; and it is an implementation of
growth independent of the in-memory manager (engine/grow.py), which the tests hold to
the same weights and state, bit for bit.

The grown tensors go into a single-process engine at the new depth and out through
save_checkpoint, so the result is exactly the format training writes and resumes from, at
any layout. Memory: the whole checkpoint plus one engine, in one process (an offline tool).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from megatron.core.dist_checkpointing import load_common_state_dict

from grow_megatron.config.base import ConfigError
from grow_megatron.config.rundir import GrowthEvent
from grow_megatron.engine.build import build_engine, destroy_engine
from grow_megatron.engine.checkpoint import (
    ensure_state_initialized,
    keys,
    read_global_tensors,
    read_meta,
    save_checkpoint,
    scatter_param_state,
    set_step_count,
)
from grow_megatron.engine.distributed import init_distributed
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import Growth


def grow_tensors(tensors: dict[str, torch.Tensor], growth: Growth) -> dict[str, torch.Tensor]:
    """The grown checkpoint's tensors: layer-stacked ones re-indexed by the source map [pure]."""
    index = torch.tensor(growth.source_map, dtype=torch.long)
    new = torch.tensor(growth.new_positions, dtype=torch.long)
    out = {}
    for key, t in tensors.items():
        parsed = keys.parse_state_key(key)
        suffix = None if parsed is None else keys.layer_suffix(parsed[1])
        if suffix is None:
            out[key] = t
            continue
        if t.shape[0] != growth.old_depth:
            raise ValueError(f"{key}: layer axis of {t.shape[0]} != the growth's old depth {growth.old_depth}")
        g = t.index_select(0, index)  # [L + b, ...]
        # The same rule as the in-memory manager: the weight and its main copy, not the moments.
        if growth.zero_outputs and suffix in keys.OUTPUT_PROJECTIONS and parsed[0] not in keys.MOMENTS:
            g[new] = 0
        out[key] = g
    return out


def grow_checkpoint(src_dir: str, growth: Growth, model, out_root: str) -> str:
    """Write `src_dir` grown by `growth` as a complete checkpoint under `out_root` (same step,
    growth history extended); returns its directory. `model`: the run's ModelConfig.

    Runs in one process inside `device_context()`."""
    meta = read_meta(src_dir)
    if meta["depth"] != growth.old_depth:
        raise ConfigError(
            "checkpoint", src_dir, f"holds depth {meta['depth']}, the growth starts from {growth.old_depth}"
        )
    t0 = time.perf_counter()
    tensors = grow_tensors(read_global_tensors(src_dir), growth)
    embed = tensors[keys.model_key(keys.EMBED)]
    layout = init_distributed(1, 1, seed=0)
    if layout.world != 1:
        raise RuntimeError("offline growth runs in a single process (do not launch it with torchrun)")
    spec = engine_spec(replace(model, num_layers=growth.new_depth), embed.shape[0], bf16=embed.dtype == torch.bfloat16)
    engine = build_engine(spec, growth.new_depth, init_weights=False)
    ensure_state_initialized(engine.optimizer)
    for name, p in engine.named_parameters():
        key, layer = keys.stacked_name(name)
        state = {}
        for k in keys.STATE_KEYS:
            t = tensors[keys.state_key(k, keys.model_key(key))]
            state[k] = t[layer] if layer is not None else t
            if tuple(state[k].shape) != tuple(p.shape):
                raise ValueError(f"{name}: checkpoint tensor {tuple(state[k].shape)} != model {tuple(p.shape)}")
        scatter_param_state(engine.optimizer, p, state)
    step = int(load_common_state_dict(src_dir)["common"]["optimizer_step"])
    set_step_count(engine.optimizer, step)
    event = GrowthEvent.of(
        meta["step"],
        growth,
        seconds=round(time.perf_counter() - t0, 4),
        pipeline_split=[growth.new_depth],
        offline=True,
    )
    # The grown run is another run (its config.yaml, written by `grow`, is its identity).
    new_meta = {k: v for k, v in meta.items() if k not in ("step", "depth", "split", "identity")}
    new_meta["growths"] = list(meta.get("growths", [])) + [event.to_dict()]
    try:
        return save_checkpoint(engine, out_root, meta["step"], new_meta)
    finally:
        destroy_engine(engine)
