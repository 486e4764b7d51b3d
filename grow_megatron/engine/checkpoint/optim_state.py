"""Per-parameter optimizer state in model space, for growth and layout-free checkpoints.

megatron's DistributedOptimizer keeps, on each data-parallel rank, a flat range of every
parameter's fp32 main copy and AdamW moments. Growth (copy a layer's state to another
position) and resharding checkpoints both want the state per parameter, shaped like the
parameter (this rank's TP shard). `gather_param_state` assembles that from the DP shards;
`scatter_param_state` writes it back into a (new) optimizer, each rank keeping its range.
Growth moves only ranges (`dp_span_tables`: every DP rank's range of every parameter).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from grow_megatron.engine.checkpoint.keys import STATE_KEYS
from grow_megatron.growth.ownership import dp_spans


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


def local_range(optimizer, param) -> tuple[int, int] | None:
    """This DP rank's [start, end) of the flattened `param` (its TP x PP slice), or None."""
    return _local_range(_owner(optimizer, param), param)


def local_state(optimizer, param) -> dict[str, torch.Tensor] | None:
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
                full[k][rng[0] : rng[1]] = shard[k].detach().float().view(-1)
    if parallel_state.get_data_parallel_world_size() > 1:
        # Ranges of different DP ranks are disjoint, so a sum assembles the whole tensor.
        flat = torch.stack([full[k] for k in STATE_KEYS])
        dist.all_reduce(flat, group=parallel_state.get_data_parallel_group())
        full = dict(zip(STATE_KEYS, flat.unbind(0)))
    return {k: v.view(param.shape) for k, v in full.items()}


def dp_span_tables(model, optimizer) -> dict:
    """{param: every DP rank's span of it} for the parameters of the DDP chunks `model`, from
    megatron's buffer layout (growth.ownership.dp_spans). This rank's entry is checked against
    what its optimizer holds, so a change of megatron's partitioning fails here, loudly."""
    dp, me = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    out = {}
    for m in model:
        for buf in m.buffers + m.expert_parallel_buffers:
            for p, (start, end, bucket_id) in buf.param_index_map.items():
                bucket = buf.buckets[bucket_id]
                spans = dp_spans(start, end, bucket.offset, bucket.grad_data.numel(), dp)
                if spans[me] != local_range(optimizer, p):
                    raise RuntimeError(
                        f"DP rank {me}: computed span {spans[me]} of a parameter of shape "
                        f"{tuple(p.shape)}, the optimizer holds {local_range(optimizer, p)}"
                    )
                out[p] = spans
    return out


def own_state(optimizer, param) -> dict[str, torch.Tensor] | None:
    """local_state to read, with every key of STATE_KEYS (before the first step AdamW has no
    moments yet, which are zero by definition). Detached: with fp32 weights the main copy is a
    view of the parameter, and a copy that recorded autograd history would keep the
    parameter's gradient hooks, and so the whole old engine, alive."""
    state = local_state(optimizer, param)
    if state is None:
        return None
    return {
        k: state[k].detach() if k in state else torch.zeros_like(state["param"], requires_grad=False)
        for k in STATE_KEYS
    }


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
            shard[k].copy_(state[k].reshape(-1)[rng[0] : rng[1]].view_as(shard[k]))


def set_step_count(optimizer, step: int) -> None:
    for opt in _inner_optimizers(optimizer):
        for state in opt.optimizer.state.values():
            if "step" in state:
                if torch.is_tensor(state["step"]):
                    state["step"].fill_(step)
                else:
                    state["step"] = step


def nonfinite_state(model_chunks, optimizer) -> list[str]:
    """Names of the kinds of state (weights, fp32 main copies, AdamW moments) holding an inf or
    NaN on any rank; empty when everything is finite. Every rank gets the same answer, so all
    of them take the same decision about the save that follows."""
    kinds = ("weights", "main copies", "exp_avg", "exp_avg_sq")
    bad = torch.zeros(
        len(kinds), dtype=torch.float32, device=next(p for m in model_chunks for p in m.parameters()).device
    )
    for m in model_chunks:
        for p in m.parameters():
            if not torch.isfinite(p).all():
                bad[0] = 1
    for opt in _inner_optimizers(optimizer):
        for group in opt.optimizer.param_groups:
            for main in group["params"]:  # the fp32 main-copy shards this rank owns
                if not torch.isfinite(main).all():
                    bad[1] = 1
                state = opt.optimizer.state.get(main, {})
                for i, k in enumerate(kinds[2:], start=2):
                    if k in state and not torch.isfinite(state[k]).all():
                        bad[i] = 1
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return [k for k, flag in zip(kinds, bad.tolist()) if flag]
