"""An engine's weights and optimizer state as megatron's sharded state dict, for a save and a
load: every parameter's ShardedTensor and, with the same sharding, its fp32 main copy and
AdamW moments, each DP rank contributing its own flat range (dp_shards.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from grow_megatron.engine.checkpoint.dp_shards import param_pieces
from grow_megatron.engine.checkpoint.keys import MODEL, STATE_KEYS, state_key
from grow_megatron.engine.checkpoint.optim_state import local_range, local_state

if TYPE_CHECKING:
    from grow_megatron.engine.build import Engine


def _flatten(sd: dict, out: dict | None = None, prefix: str = "") -> dict:
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


def sharded_state(engine: Engine, for_load: bool) -> tuple[dict, dict]:
    """(sharded state dict, {opt entry: (this rank's 1-d state tensor, piece list)}) for this rank's chunks.

    Every DP rank contributes, for every parameter, only its own flat range of the fp32 main
    copy and moments (dp_shards.py: at most three rectangles of the global tensor,
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
        chunk_sd = chunk.sharded_state_dict(prefix=MODEL)
        model_sd[f"chunk{c}"] = chunk_sd
        for name, parent, key, sh, p in _model_params(chunk_sd, {id(p): p for p in chunk.parameters()}):
            rng = local_range(engine.optimizer, p)
            if not for_load:  # (an empty list would be saved as a common value, clashing on load)
                if rng is None:
                    del parent[key]
                else:
                    parent[key] = param_pieces(sh, p, p.detach().view(-1)[rng[0] : rng[1]], rng[0])
            if rng is None:
                continue
            state = local_state(engine.optimizer, p)
            for k in STATE_KEYS:
                # Before the first step AdamW has no moments yet: they are zero by definition.
                flat = state.get(k)
                if flat is None:
                    flat = torch.zeros(rng[1] - rng[0], dtype=torch.float32, device=p.device)
                entry = f"{k}.chunk{c}.{name}"
                optim_sd[entry] = param_pieces(sh, p, flat, rng[0], key=state_key(k, sh.key))
                targets[entry] = (flat, optim_sd[entry])
    return {"model": model_sd, "optimizer": optim_sd}, targets


def unflatten_model(model_sd: dict) -> dict:
    """Loaded MODEL-prefixed entries back to the module's state-dict names."""
    return {k[len(MODEL) :]: v for k, v in _flatten(model_sd).items() if torch.is_tensor(v)}
