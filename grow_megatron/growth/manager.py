"""The growth manager: moves weights and optimizer state from depth L to depth L+b.

The operator (a pure function) decided *what* to copy; this module does the moving, the
same way for every operator and every TP x PP x DP layout:

1. build the engine at the new depth (new model chunk, DDP buffers, distributed optimizer);
2. for every position of the grown model, take the source layer's parameters and their
   fp32 main copies and AdamW moments (assembled from the DP shards), from the local stage or
   point-to-point from the stage that holds it (same TP rank, same DP rank: the TP layout
   never changes, so each TP rank moves only its own shards), and write them into the new
   optimizer, each DP rank keeping its own range;
3. continue AdamW's step count, and drop the old engine.

Work is streamed parameter by parameter, so the extra memory beyond the two engines is one
parameter's state.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from grow_megatron.growth.operators import Growth
from grow_megatron.growth.partition import transfer_plan
from grow_megatron.training.engine import Engine, build_engine, destroy_engine
from grow_megatron.training.optim_state import (STATE_KEYS, ensure_state_initialized, gather_param_state,
                                                optimizer_step_count, scatter_param_state, set_step_count)

# Output projections of a layer: zero in a copy => the copy adds nothing to the residual stream.
_OUTPUT_PROJECTIONS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def _layer_params(engine: Engine) -> dict[int, dict[str, torch.nn.Parameter]]:
    """This rank's layer parameters: global position -> {name within the layer: param}."""
    return {pos: dict(layer.named_parameters()) for pos, layer in engine.layers_by_position().items()}


def _other_params(engine: Engine) -> dict[str, torch.nn.Parameter]:
    """Parameters outside the transformer layers (embedding, final norm, output layer), keyed by
    chunk and name: the chunk structure of a rank is the same at every depth."""
    layer_ids = {id(p) for layer in engine.layers_by_position().values() for p in layer.parameters()}
    return {f"{c}:{name}": p for c, chunk in enumerate(engine.chunks)
            for name, p in chunk.named_parameters() if id(p) not in layer_ids}


def _pp_peer(pp_rank: int) -> int:
    """Global rank of the given pipeline rank in this rank's pipeline group (same TP, DP)."""
    return dist.get_global_rank(parallel_state.get_pipeline_model_parallel_group(), pp_rank)


def grow(engine: Engine, growth: Growth) -> Engine:
    """Return the engine at growth.new_depth; `engine` is destroyed."""
    if growth.old_depth != engine.depth:
        raise ValueError(f"growth from depth {growth.old_depth} applied to a model of depth {engine.depth}")
    step = optimizer_step_count(engine.optimizer)
    new = build_engine(engine.spec, growth.new_depth, init_weights=False)
    ensure_state_initialized(new.optimizer)

    my_rank = parallel_state.get_pipeline_model_parallel_rank()
    old_layers, new_layers = _layer_params(engine), _layer_params(new)
    old_other = _other_params(engine)

    # Embedding, final norm (and the untied output layer, if any) stay where they are.
    for name, p in _other_params(new).items():
        scatter_param_state(new.optimizer, p, gather_param_state(engine.optimizer, old_other[name]))

    new_positions = set(growth.new_positions)
    for move in transfer_plan(growth, engine.split, new.split, pp=engine.spec.pp):
        if my_rank not in (move.src_rank, move.dst_rank):
            continue
        zero = growth.zero_outputs and move.dst_pos in new_positions
        src = old_layers[move.src_layer] if my_rank == move.src_rank else None
        dst = new_layers[move.dst_pos] if my_rank == move.dst_rank else None
        for suffix in sorted((src or dst).keys()):
            state = gather_param_state(engine.optimizer, src[suffix]) if src is not None else None
            if not move.local:
                # Same TP rank and DP rank on the other stage; shapes are known to both sides.
                shape_from = src[suffix] if src is not None else dst[suffix]
                buf = (torch.stack([state[k] for k in STATE_KEYS]) if state is not None
                       else torch.empty((len(STATE_KEYS),) + tuple(shape_from.shape), dtype=torch.float32,
                                        device=shape_from.device))
                if my_rank == move.src_rank:
                    dist.send(buf, _pp_peer(move.dst_rank))
                else:
                    dist.recv(buf, _pp_peer(move.src_rank))
                    state = dict(zip(STATE_KEYS, buf.unbind(0)))
            if dst is not None:
                if zero and suffix in _OUTPUT_PROJECTIONS:
                    state = {**state, "param": torch.zeros_like(state["param"])}
                scatter_param_state(new.optimizer, dst[suffix], state)

    set_step_count(new.optimizer, step)
    # DDP keeps its own copy of the parameters in its param buffer, and the distributed
    # optimizer's fp32 main shards were written above; the model params are views into the
    # buffer, so nothing else to sync.
    destroy_engine(engine)
    return new
