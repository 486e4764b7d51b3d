"""engine.build.optimizer_step (the step train_step takes) against megatron's own
optimizer.step(): the same weights, AdamW moments and grad norm bit for bit, with the clip
active, inactive and off, and the same refusal of a step with a NaN gradient."""

import pytest
import torch

from engine_helpers import narrow_model, random_batch
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.build import build_engine, optimizer_step, poison_gradients, run_microbatches, set_lr
from grow_megatron.engine.resolve import engine_spec

V, S = 64, 8
MODEL = narrow_model(2, V, S)


def _engine(clip):
    torch.manual_seed(0)
    return build_engine(engine_spec(MODEL, V, optim=OptimConfig(lr=1e-2, clip_grad=clip)), 2)


def _state(engine) -> dict:
    out = {f"param.{k}": p.detach().clone() for k, p in engine.named_parameters()}
    for i, st in enumerate(engine.optimizer.chained_optimizers[0].optimizer.state.values()):
        out.update({f"state{i}.{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize("clip", [1e-3, 1e3, 0.0], ids=["clipped", "under-the-clip", "clip-off"])
def test_equals_megatrons_step(engine_env, clip):
    ours, theirs = _engine(clip), _engine(clip)
    for step in range(3):
        batch = [random_batch(step, V, S)]
        for e in (ours, theirs):
            run_microbatches(e, batch, forward_only=False)
            set_lr(e, 1e-2)
        ok, norm = optimizer_step(ours.optimizer)
        ok_m, norm_m, _ = theirs.optimizer.step()
        assert ok and ok_m
        if clip > 0:  # megatron reports no norm with the clip off; ours always does
            assert norm == norm_m
        if clip == 1e-3:
            assert norm > 1e-3  # the clip did act
        a, b = _state(ours), _state(theirs)
        assert a.keys() == b.keys() and len(a) > 2 * len(list(ours.named_parameters()))
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)


def test_a_nan_gradient_skips_the_step_like_megatron(engine_env):
    e = _engine(1.0)
    run_microbatches(e, [random_batch(0, V, S)], forward_only=False)
    before = _state(e)
    poison_gradients(e)
    assert optimizer_step(e.optimizer) == (False, None)
    after = _state(e)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_data_parallel_group_of_one_moves_no_buffer(engine_env):
    """GrowDDP: alone in its data-parallel group, a step reduce-scatters no gradient buffer and
    all-gathers no parameter buffer (megatron's DDP copies each onto itself through gloo)."""
    from torch.profiler import ProfilerActivity, profile

    from grow_megatron.engine.build import train_step

    e = _engine(1.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = train_step(e, [random_batch(0, V, S)], 1e-2)
    names = {ev.name for ev in prof.events()}
    assert out["update_ok"] and any(n.startswith("c10d::") for n in names)  # the profile sees collectives
    assert not [n for n in names if "reduce_scatter" in n or "allgather" in n or "all_gather" in n], names
