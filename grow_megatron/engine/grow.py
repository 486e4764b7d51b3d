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

Work is streamed layer by layer: one all-reduce over the DP group assembles a layer's state
(all its parameters, all three tensors), and a layer crossing stages goes in one message, so
the extra memory beyond the two engines is one layer's state. Where the device cannot hold
both engines (the last growth of a model that fills most of the GPU), host staging first
copies this rank's old state to host memory and frees the old engine, so the device peak is
the larger engine plus one layer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from grow_megatron.engine.keys import OUTPUT_PROJECTIONS
from grow_megatron.growth.operators import Growth
from grow_megatron.growth.partition import transfer_plan
from grow_megatron.engine.build import Engine, build_engine, destroy_engine
from grow_megatron.engine.optim_state import (STATE_KEYS, ensure_state_initialized, gather_states,
                                                optimizer_step_count, scatter_param_state, set_step_count)



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


# A source of old state: local position -> () -> {name in layer: state}, and () -> {non-layer name: state}.
# Each state is {param, exp_avg, exp_avg_sq} on the device, shaped like the parameter. One call
# gathers a whole layer (or all non-layer parameters) with one collective over the DP group.
_Source = tuple[dict[int, Callable[[], dict]], Callable[[], dict]]


def _gather(engine: Engine, named: dict[str, torch.nn.Parameter]) -> dict[str, dict]:
    names = sorted(named)  # every DP rank packs in the same order
    return dict(zip(names, gather_states(engine, [named[n] for n in names])))


def _live_source(engine: Engine) -> _Source:
    """State read from the old engine when a move needs it (both engines on the device)."""
    def thunk(named):
        return lambda: _gather(engine, named)

    return ({pos: thunk(params) for pos, params in _layer_params(engine).items()}, thunk(_other_params(engine)))


def _host_source(engine: Engine) -> _Source:
    """Every local parameter's state copied to host memory now, so the old engine can be
    freed before the new one is built. The thunks hold host tensors and a device name only:
    nothing of the old engine stays reachable."""
    def stage(named):
        host = {n: {k: v.to("cpu") for k, v in st.items()} for n, st in _gather(engine, named).items()}
        dev = next(iter(named.values())).device
        return lambda: {n: {k: v.to(dev) for k, v in st.items()} for n, st in host.items()}

    # The gathers are collectives over the DP group: every DP rank walks the same order.
    return ({pos: stage(params) for pos, params in sorted(_layer_params(engine).items())},
            stage(_other_params(engine)))


def needs_host_staging(engine: Engine, growth: Growth, mode: str = "auto") -> bool:
    """on/off as given; auto: on a GPU, when the new engine (estimated from the memory the old
    one holds, scaled by depth) would not fit next to the old one in what the device has left."""
    if mode != "auto":
        return mode == "on"
    if not engine.spec.device.is_gpu:
        return False  # host and device memory are one: staging would only copy
    held = torch.cuda.memory_allocated()
    free, _ = torch.cuda.mem_get_info()
    reusable = free + torch.cuda.memory_reserved() - held  # the caching allocator's idle blocks count
    estimate = held * growth.new_depth / growth.old_depth
    flag = torch.tensor([float(estimate > 0.9 * reusable)], device="cuda")
    # One decision for all ranks: staging gathers every DP shard up front, the live path in
    # move order, and DP ranks must run their gather collectives in the same order.
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def grow(engine: Engine, growth: Growth, host_staging: bool = False) -> Engine:
    """Return the engine at growth.new_depth; `engine` is destroyed. host_staging: stage the
    old state through host memory and free the old engine first (see needs_host_staging)."""
    if growth.old_depth != engine.depth:
        raise ValueError(f"growth from depth {growth.old_depth} applied to a model of depth {engine.depth}")
    step = optimizer_step_count(engine.optimizer)
    spec, old_split = engine.spec, engine.split
    if host_staging:
        old_layers, old_other = _host_source(engine)
        destroy_engine(engine)
        engine = None
    else:
        old_layers, old_other = _live_source(engine)
    new = build_engine(spec, growth.new_depth, init_weights=False)
    ensure_state_initialized(new.optimizer)
    _fill(new, growth, old_split, old_layers, old_other)
    del old_layers, old_other  # live thunks reference the old parameters
    set_step_count(new.optimizer, step)
    # DDP keeps its own copy of the parameters in its param buffer, and the distributed
    # optimizer's fp32 main shards were written above; the model params are views into the
    # buffer, so nothing else to sync.
    if engine is not None:
        destroy_engine(engine)
    return new


def _fill(new: Engine, growth: Growth, old_split: tuple[int, ...], old_layers, old_other) -> None:
    """Write every local parameter of the new engine from its source, a layer at a time (moving
    it between pipeline ranks in one message where the plan says so)."""
    my_rank = parallel_state.get_pipeline_model_parallel_rank()
    new_layers = _layer_params(new)

    # Embedding, final norm (and the untied output layer, if any) stay where they are.
    others = old_other()
    for name, p in _other_params(new).items():
        scatter_param_state(new.optimizer, p, others[name])
    del others

    new_positions = set(growth.new_positions)
    for move in transfer_plan(growth, old_split, new.split, pp=new.spec.pp):
        if my_rank not in (move.src_rank, move.dst_rank):
            continue
        zero = growth.zero_outputs and move.dst_pos in new_positions
        states = old_layers[move.src_layer]() if my_rank == move.src_rank else None
        dst = new_layers[move.dst_pos] if my_rank == move.dst_rank else None
        if not move.local:
            # Same TP rank and DP rank on the other stage; the layer's shapes are known to both sides.
            if states is not None:
                dist.send(_pack(states), _pp_peer(move.dst_rank))
            else:
                shapes = {n: p.shape for n, p in dst.items()}
                buf = torch.empty(len(STATE_KEYS) * sum(p.numel() for p in dst.values()), dtype=torch.float32,
                                  device=next(iter(dst.values())).device)
                dist.recv(buf, _pp_peer(move.src_rank))
                states = _unpack(buf, shapes)
        if dst is not None:
            for suffix, p in sorted(dst.items()):
                state = states[suffix]
                if zero and suffix in OUTPUT_PROJECTIONS:
                    state = {**state, "param": torch.zeros_like(state["param"])}
                scatter_param_state(new.optimizer, p, state)


def _pack(states: dict[str, dict]) -> torch.Tensor:
    """One layer's states as one flat message, in (name, state key) order."""
    return torch.cat([states[n][k].reshape(-1) for n in sorted(states) for k in STATE_KEYS])


def _unpack(buf: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, dict]:
    out, pos = {}, 0
    for n in sorted(shapes):
        size = shapes[n].numel()
        out[n] = {}
        for k in STATE_KEYS:
            out[n][k] = buf[pos:pos + size].view(shapes[n])
            pos += size
    return out
