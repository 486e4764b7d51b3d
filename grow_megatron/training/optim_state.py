"""Per-parameter optimizer state in model space, for growth and layout-free checkpoints.

megatron's DistributedOptimizer keeps, on each data-parallel rank, a flat range of every
parameter's fp32 main copy and AdamW moments. Growth (copy a layer's state to another
position) and resharding checkpoints both want the state per parameter, shaped like the
parameter (this rank's TP shard). `gather_param_state` assembles that from the DP shards;
`scatter_param_state` writes it back into a (new) optimizer, each rank keeping its range.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state

STATE_KEYS = ("param", "exp_avg", "exp_avg_sq")


def _inner_optimizers(optimizer):
    return getattr(optimizer, "chained_optimizers", [optimizer])


def _owner(optimizer, param):
    """The (inner) distributed optimizer holding a range of `param` on this DP rank, or None
    when another DP rank owns all of it (megatron maps only locally owned params)."""
    for opt in _inner_optimizers(optimizer):
        if param in opt.model_param_gbuf_map:
            return opt
    return None


def _local_range(opt, param):
    """This DP rank's [start, end) of the flattened param, or None if it owns none of it."""
    if opt is None:
        return None
    gbuf_index, dtype, bucket_index = opt.model_param_gbuf_map[param]
    param_map = opt.gbuf_ranges[gbuf_index][dtype][bucket_index]["param_map"]
    if param not in param_map:
        return None
    r = param_map[param]["param"]
    return r.start, r.end


def local_range(optimizer, param) -> Optional[tuple[int, int]]:
    """This DP rank's [start, end) of the flattened `param` (its TP x PP slice), or None."""
    return _local_range(_owner(optimizer, param), param)


def local_state(optimizer, param) -> Optional[dict[str, torch.Tensor]]:
    """This DP rank's flat range of the main copy and moments of `param`: the optimizer's own
    1-d tensors (writing into them sets the state), or None if another DP rank owns all of it."""
    opt = _owner(optimizer, param)
    if _local_range(opt, param) is None:
        return None
    shard = opt._get_main_param_and_optimizer_states(param)
    return {k: shard[k] for k in STATE_KEYS if k in shard}


def optimizer_step_count(optimizer) -> int:
    """AdamW's step counter (the same for every parameter in our training)."""
    for opt in _inner_optimizers(optimizer):
        for state in opt.optimizer.state.values():
            if "step" in state:
                return int(state["step"])
    return 0


def ensure_state_initialized(optimizer) -> None:
    """Give every parameter AdamW state tensors (a fresh optimizer has none until its first step)."""
    for opt in _inner_optimizers(optimizer):
        if not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def gather_param_state(optimizer, param: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    """{param (fp32 main copy), exp_avg, exp_avg_sq}, each fp32 and shaped like `param`."""
    opt = _owner(optimizer, param)
    dev = param.device
    full = {k: torch.zeros(param.numel(), dtype=torch.float32, device=dev) for k in STATE_KEYS}
    rng = _local_range(opt, param)
    if rng is not None:
        shard = opt._get_main_param_and_optimizer_states(param)
        # Before the first step AdamW has no moments yet: they are zero by definition.
        for k in STATE_KEYS:
            if k in shard:
                full[k][rng[0]:rng[1]] = shard[k].detach().float().view(-1)
    if parallel_state.get_data_parallel_world_size() > 1:
        # Ranges of different DP ranks are disjoint, so a sum assembles the whole tensor.
        flat = torch.stack([full[k] for k in STATE_KEYS])
        dist.all_reduce(flat, group=parallel_state.get_data_parallel_group())
        full = dict(zip(STATE_KEYS, flat.unbind(0)))
    return {k: v.view(param.shape) for k, v in full.items()}


def dp_ranges(engine_model, param) -> list[tuple[int, int]]:
    """Every DP rank's [start, end) of the flattened `param` (empty: start == end), in DP-rank
    order. megatron's distributed optimizer gives rank r the r-th of DP equal parts of each
    grad-buffer bucket (DistributedOptimizer._build_model_gbuf_range); this is the same split,
    computed from the DDP buffers' public layout so that no rank has to ask the others."""
    for ddp in engine_model:
        for buf in ddp.buffers + ddp.expert_parallel_buffers:
            if param not in buf.param_index_map:
                continue
            start, end, b = buf.param_index_map[param]
            bucket = buf.buckets[b]
            dp = buf.data_parallel_group.size()
            part = bucket.grad_data.numel() // dp
            out = []
            for r in range(dp):
                lo, hi = max(start, bucket.offset + r * part), min(end, bucket.offset + (r + 1) * part)
                out.append((lo - start, hi - start) if hi > lo else (0, 0))
            return out
    raise KeyError("parameter not in any DDP buffer of this engine")


def gather_states(engine, params: list) -> list[dict[str, torch.Tensor]]:
    """gather_param_state for several parameters with one all-gather over the DP group: each
    rank contributes its ranges of all of them, packed (padded to the longest rank's pack)."""
    if not params:
        return []
    dp = parallel_state.get_data_parallel_world_size()
    me = parallel_state.get_data_parallel_rank() if dp > 1 else 0
    ranges = [dp_ranges(engine.model, p) for p in params]  # [param][dp rank] -> (start, end)
    parts = []
    for p, rng in zip(params, ranges):
        s, e = rng[me]
        if e > s:
            if local_range(engine.optimizer, p) != (s, e):
                raise RuntimeError(f"DP range of a {tuple(p.shape)} parameter: buffer layout says {(s, e)}, "
                                   f"the optimizer {local_range(engine.optimizer, p)}")
            state = local_state(engine.optimizer, p)
            # Before the first step AdamW has no moments yet: they are zero by definition.
            parts += [state[k].detach().float() if k in state else torch.zeros(e - s, device=p.device)
                      for k in STATE_KEYS]
    packed_len = [len(STATE_KEYS) * sum(rng[r][1] - rng[r][0] for rng in ranges) for r in range(dp)]
    width = max(packed_len)
    dev = params[0].device
    mine = torch.zeros(width, dtype=torch.float32, device=dev)
    if parts:
        torch.cat(parts, out=mine[:packed_len[me]])
    if dp > 1:
        every = torch.empty(dp * width, dtype=torch.float32, device=dev)
        dist.all_gather_into_tensor(every, mine, group=parallel_state.get_data_parallel_group())
    else:
        every = mine
    full = [{k: torch.empty(p.numel(), dtype=torch.float32, device=dev) for k in STATE_KEYS} for p in params]
    for r in range(dp):
        pos = r * width
        for f, rng in zip(full, ranges):
            s, e = rng[r]
            for k in STATE_KEYS:
                f[k][s:e] = every[pos:pos + e - s]
                pos += e - s
    return [{k: v.view(p.shape) for k, v in f.items()} for f, p in zip(full, params)]


def scatter_param_state(optimizer, param: torch.nn.Parameter, state: dict[str, torch.Tensor]) -> None:
    """Set the main copy and moments of `param` from full tensors; also the model param itself."""
    opt = _owner(optimizer, param)
    with torch.no_grad():
        param.copy_(state["param"].to(param.dtype))
        rng = _local_range(opt, param)
        if rng is None:
            return
        shard = opt._get_main_param_and_optimizer_states(param)
        for k in STATE_KEYS:
            shard[k].copy_(state[k].reshape(-1)[rng[0]:rng[1]].view_as(shard[k]))


def set_step_count(optimizer, step: int) -> None:
    for opt in _inner_optimizers(optimizer):
        for state in opt.optimizer.state.values():
            if "step" in state:
                if torch.is_tensor(state["step"]):
                    state["step"].fill_(step)
                else:
                    state["step"] = step
