"""The growth manager: moves weights and optimizer state from depth L to depth L+b.

The operator (a pure function) decided *what* to copy; this module does the moving, the
same way for every operator and every TP x PP x DP layout:

1. build the engine at the new depth (new model chunk, DDP buffers, distributed optimizer);
2. for every position of the grown model, take the source layer's parameters (replicated over
   DP) and, of their fp32 main copies and AdamW moments, the ranges this DP rank owns; move
   them point-to-point when the source layer lives on another pipeline stage (same TP rank,
   same DP rank: the TP layout never changes, so each TP rank moves only its own shards);
   then each DP rank receives, in one all-to-all over the DP group, only the pieces of the
   ranges it owns in the new optimizer that another DP rank held
   (`growth.ownership.ownership_plan`, planned from both buffer layouts), and copies the rest
   locally;
3. continue AdamW's step count, and drop the old engine.

Work is streamed layer by layer (one all-to-all per layer whose owners change, and a layer
crossing stages in one message), so the extra memory beyond the two engines is one layer's
ranges. Where the device cannot hold both engines (the last growth of a model that fills most
of the GPU), host staging first copies this rank's old weights and ranges to host memory and
frees the old engine, so the device peak is the larger engine plus one layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from grow_megatron.engine.build import Engine, build_engine, destroy_engine
from grow_megatron.engine.checkpoint import (
    dp_span_tables,
    ensure_state_initialized,
    local_state,
    optimizer_step_count,
    own_state,
    set_step_count,
)
from grow_megatron.engine.checkpoint.keys import OUTPUT_PROJECTIONS, STATE_KEYS
from grow_megatron.growth.operators import Growth
from grow_megatron.growth.ownership import exchange_sizes, ownership_plan
from grow_megatron.growth.partition import transfer_plan


def _layer_params(engine: Engine) -> dict[int, dict[str, torch.nn.Parameter]]:
    """This rank's layer parameters: global position -> {name within the layer: param}."""
    return {pos: dict(layer.named_parameters()) for pos, layer in engine.layers_by_position().items()}


def _other_params(engine: Engine) -> dict[str, torch.nn.Parameter]:
    """Parameters outside the transformer layers (embedding, final norm, output layer), keyed by
    chunk and name: the chunk structure of a rank is the same at every depth."""
    layer_ids = {id(p) for layer in engine.layers_by_position().values() for p in layer.parameters()}
    return {
        f"{c}:{name}": p
        for c, chunk in enumerate(engine.chunks)
        for name, p in chunk.named_parameters()
        if id(p) not in layer_ids
    }


def _pp_peer(pp_rank: int) -> int:
    """Global rank of the given pipeline rank in this rank's pipeline group (same TP, DP)."""
    return dist.get_global_rank(parallel_state.get_pipeline_model_parallel_group(), pp_rank)


@dataclass
class _Held:
    """One parameter of the old engine as this DP rank holds it."""

    weight: torch.Tensor
    """The whole parameter (this TP x PP slice), replicated over DP."""
    spans: tuple
    """Every DP rank's range of the flattened parameter (None: owns none of it)."""
    state: dict[str, torch.Tensor] | None
    """{param (fp32 main copy), exp_avg, exp_avg_sq} over this rank's range, 1-d; None: no range."""


# A source of old state: local position -> () -> {name in layer: _Held}, and () -> {non-layer
# name: _Held}. Reading one needs no communication: each rank holds its own ranges.
_Source = tuple[dict[int, Callable[[], dict]], Callable[[], dict]]


def _held(engine: Engine, named: dict[str, torch.nn.Parameter], tables: dict) -> dict[str, _Held]:
    return {n: _Held(p.detach(), tables[p], own_state(engine.optimizer, p)) for n, p in named.items()}


def _live_source(engine: Engine) -> _Source:
    """State read from the old engine when a move needs it (both engines on the device)."""
    tables = dp_span_tables(engine.model, engine.optimizer)

    def thunk(named):
        return lambda: _held(engine, named, tables)

    return ({pos: thunk(params) for pos, params in _layer_params(engine).items()}, thunk(_other_params(engine)))


def _host_source(engine: Engine) -> _Source:
    """Every local parameter and this rank's ranges of its state copied to host memory now, so
    the old engine can be freed before the new one is built. The thunks hold host tensors and
    a device name only: nothing of the old engine stays reachable."""
    tables = dp_span_tables(engine.model, engine.optimizer)

    def stage(named):
        host = {
            n: _Held(
                h.weight.to("cpu", copy=True),
                h.spans,
                None if h.state is None else {k: v.to("cpu", copy=True) for k, v in h.state.items()},
            )
            for n, h in _held(engine, named, tables).items()
        }
        dev = {n: p.device for n, p in named.items()}
        return lambda: {
            n: _Held(
                h.weight.to(dev[n]), h.spans, None if h.state is None else {k: v.to(dev[n]) for k, v in h.state.items()}
            )
            for n, h in host.items()
        }

    return ({pos: stage(params) for pos, params in _layer_params(engine).items()}, stage(_other_params(engine)))


def _sync_weights(engine: Engine) -> None:
    """Make every DP rank's copy of the weights current: with megatron's overlap_param_gather
    the all-gather of the updated weights waits for the next forward pass, and the growth reads
    the weights each rank holds (only the main copies and moments are sharded)."""
    for m in engine.model:
        if m.ddp_config.overlap_param_gather:
            m.start_param_sync(force_sync=True)


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
    # One decision for all ranks: the peak a growth may reach is the same on every rank, and
    # so is the mode its event records.
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def grow(engine: Engine, growth: Growth, host_staging: bool = False) -> Engine:
    """Return the engine at growth.new_depth; `engine` is destroyed. host_staging: stage the
    old state through host memory and free the old engine first (see needs_host_staging)."""
    if growth.old_depth != engine.depth:
        raise ValueError(f"growth from depth {growth.old_depth} applied to a model of depth {engine.depth}")
    _sync_weights(engine)
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
    tables = dp_span_tables(new.model, new.optimizer)

    # Embedding, final norm (and the untied output layer, if any) stay on their stage; their
    # DP owners change with the buffer layout.
    _place(new, _other_params(new), old_other(), tables, zero=())

    new_positions = set(growth.new_positions)
    for move in transfer_plan(growth, old_split, new.split, pp=new.spec.pp):
        if my_rank not in (move.src_rank, move.dst_rank):
            continue
        held = old_layers[move.src_layer]() if my_rank == move.src_rank else None
        dst = new_layers[move.dst_pos] if my_rank == move.dst_rank else None
        if not move.local:
            # Same TP rank and DP rank on the other stage; the layer's shapes are known to both sides.
            if held is not None:
                _send(held, _pp_peer(move.dst_rank))
                continue
            held = _recv(dst, _pp_peer(move.src_rank))
        zero = OUTPUT_PROJECTIONS if growth.zero_outputs and move.dst_pos in new_positions else ()
        _place(new, dst, held, tables, zero)


def _place(new: Engine, dst: dict[str, torch.nn.Parameter], held: dict[str, _Held], tables: dict, zero) -> None:
    """Set the parameters `dst` (name in layer -> new param) from `held` (the same names): the
    weights from this rank's copy, the state of this DP rank's new ranges from the ranks that
    held each piece (one all-to-all over the DP group, skipped by every rank alike when no
    piece changes owner). Names in `zero` get zero weights and main copies (moments kept)."""
    names = sorted(dst)
    group = parallel_state.get_data_parallel_group()
    me, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    plan = ownership_plan([held[n].spans for n in names], [tables[dst[n]] for n in names])
    with torch.no_grad():
        for n in names:
            if n in zero:
                dst[n].zero_()
            else:
                dst[n].copy_(held[n].weight.view(dst[n].shape))
        keys = len(STATE_KEYS)

        def source(piece):  # the piece of a held state, as [keys, size]
            h = held[names[piece.param]]
            a = piece.start - h.spans[me][0]
            return torch.stack([h.state[k][a : a + piece.size] for k in STATE_KEYS])

        received = {}
        if any(p.src != p.dst for p in plan):
            send_sizes, recv_sizes = exchange_sizes(plan, me, dp)
            outgoing = [source(p).reshape(-1) for p in plan if p.src == me and p.dst != me]
            dev = dst[names[0]].device
            send = torch.cat(outgoing) if outgoing else torch.empty(0, dtype=torch.float32, device=dev)
            recv = torch.empty(keys * sum(recv_sizes), dtype=torch.float32, device=dev)
            dist.all_to_all_single(
                recv, send, [keys * n for n in recv_sizes], [keys * n for n in send_sizes], group=group
            )
            pos = 0
            for p in plan:  # sorted by source rank: the order of the blocks in `recv`
                if p.dst == me and p.src != me:
                    received[p] = recv[pos : pos + keys * p.size].view(keys, p.size)
                    pos += keys * p.size
        for p in plan:
            if p.dst != me:
                continue
            data = received[p] if p.src != me else source(p)
            state = local_state(new.optimizer, dst[names[p.param]])
            a = p.start - tables[dst[names[p.param]]][me][0]
            for k, row in zip(STATE_KEYS, data):
                state[k][a : a + p.size].copy_(row)
        for n in names:
            state = local_state(new.optimizer, dst[n]) if n in zero else None
            if state is not None:
                state["param"].zero_()


def _send(held: dict[str, _Held], peer: int) -> None:
    """One layer to the same DP rank of another stage: every DP rank's ranges (a header), then
    the weights and this rank's ranges of the state, in (name, state key) order."""
    names = sorted(held)
    dev = held[names[0]].weight.device
    header = torch.tensor(
        [[s if s is not None else (-1, -1) for s in held[n].spans] for n in names], dtype=torch.int64, device=dev
    )
    parts = [held[n].weight.reshape(-1).float() for n in names]
    parts += [held[n].state[k] for n in names if held[n].state is not None for k in STATE_KEYS]
    dist.send(header, peer)
    dist.send(torch.cat(parts), peer)


def _recv(dst: dict[str, torch.nn.Parameter], peer: int) -> dict[str, _Held]:
    names = sorted(dst)
    me, dp = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    dev = dst[names[0]].device
    header = torch.empty(len(names), dp, 2, dtype=torch.int64, device=dev)
    dist.recv(header, peer)
    spans = {n: tuple(None if a < 0 else (a, b) for a, b in row) for n, row in zip(names, header.tolist())}
    own = {n: 0 if spans[n][me] is None else spans[n][me][1] - spans[n][me][0] for n in names}
    buf = torch.empty(
        sum(dst[n].numel() for n in names) + len(STATE_KEYS) * sum(own.values()), dtype=torch.float32, device=dev
    )
    dist.recv(buf, peer)
    weights = list(buf.split([dst[n].numel() for n in names] + [len(STATE_KEYS) * sum(own.values())]))
    states = weights.pop().split([len(STATE_KEYS) * own[n] for n in names if own[n]])
    out, it = {}, iter(states)
    for n, w in zip(names, weights):
        state = dict(zip(STATE_KEYS, next(it).split(own[n]))) if own[n] else None
        out[n] = _Held(w.view(dst[n].shape), spans[n], state)
    return out
