"""Growth on a real megatron engine: weights and AdamW state follow the source map."""

import re

import pytest
import torch

from engine_helpers import narrow_model, random_batch
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.build import build_engine, run_microbatches, train_step
from grow_megatron.engine.checkpoint import gather_param_state, optimizer_step_count
from grow_megatron.engine.grow import grow
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import get_operator

V, S = 96, 16
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _batch(seed, b=2):
    return random_batch(seed, V, S, b)


def _engine(depth, ln_scaling=False, bf16=False):
    model = narrow_model(12, V, S, ln_scaling=ln_scaling)
    spec = engine_spec(model, V, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0), bf16=bf16)
    torch.manual_seed(0)
    return build_engine(spec, depth)


def _state(engine):
    return {n: gather_param_state(engine.optimizer, p) for n, p in engine.named_parameters()}


@pytest.mark.parametrize(
    "operator,old,bf16,staged",
    [
        ("midas", 8, False, False),
        ("lidas", 8, False, False),
        ("top", 4, False, False),
        ("bottom", 4, False, False),
        ("lidas", 8, True, False),
        ("midas", 8, True, True),
    ],
    ids=["midas", "lidas", "top", "bottom", "lidas-bf16", "midas-bf16-host-staged"],
)
def test_new_layers_copy_weights_and_adam_state(engine_env, operator, old, bf16, staged):
    # bf16: the model params are bf16, the distributed optimizer keeps fp32 main shards; both move.
    e = _engine(4, bf16=bf16)
    depth = e.depth
    # Reach `old` layers by growing (also exercises a growth of a trained, grown model).
    while depth < old:
        for s in range(2):
            train_step(e, [_batch(s)], 1e-2)
        e = grow(e, get_operator("lidas")(depth, 4))
        depth = e.depth
    for s in range(3):
        train_step(e, [_batch(10 + s)], 1e-2)
    before = _state(e)
    steps = optimizer_step_count(e.optimizer)
    g = get_operator(operator)(old, 4)
    e2 = grow(e, g, host_staging=staged)
    assert e2.depth == old + 4
    after = _state(e2)
    assert set(after) - {n for n in after if _LAYER.match(n)} == set(before) - {n for n in before if _LAYER.match(n)}
    for name, st in after.items():
        m = _LAYER.match(name)
        src = f"decoder.layers.{g.source_map[int(m.group(1))]}.{m.group(2)}" if m else name
        for k in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(st[k], before[src][k]), (name, k)
    assert optimizer_step_count(e2.optimizer) == steps
    for name, p in e2.named_parameters():
        assert p.dtype == (torch.bfloat16 if bf16 else torch.float32)
        assert torch.equal(p.detach().float(), after[name]["param"].to(p.dtype).float()), name
    # The moments are real (non-zero) state, not a fresh optimizer's.
    assert any(before[n]["exp_avg_sq"].abs().sum() > 0 for n in before)
    # Training continues.
    assert torch.isfinite(torch.tensor(train_step(e2, [_batch(99)], 1e-2)["loss"]))


def test_function_preserving_growth_keeps_logits(engine_env):
    e = _engine(4)
    for s in range(2):
        train_step(e, [_batch(s)], 1e-2)
    probe = [_batch(1234, b=3)]
    before = float(run_microbatches(e, probe, forward_only=True))
    e2 = grow(e, get_operator("midas", function_preserving=True)(4, 4))
    after = float(run_microbatches(e2, probe, forward_only=True))
    # Same computation up to the summation order of zero contributions: exact in fp32.
    assert after == pytest.approx(before, abs=1e-6)
    plain = grow(_engine(4), get_operator("midas")(4, 4))
    assert float(run_microbatches(plain, probe, forward_only=True)) != pytest.approx(before, abs=1e-3)


def test_ln_scaling_follows_positions(engine_env):
    e = _engine(8, ln_scaling=True)
    layers = list(e.local_layers())
    ident = [id(layer) for layer in layers]
    for i, layer in enumerate(layers):
        assert layer.input_layernorm.scale == pytest.approx(1 / (i + 1) ** 0.5)
        assert layer.pre_mlp_layernorm.scale == pytest.approx(1 / (i + 1) ** 0.5)
    g = get_operator("lidas")(8, 4)
    e2 = grow(e, g)
    for pos, layer in enumerate(e2.local_layers()):
        assert layer.layer_number == pos + 1
        assert layer.input_layernorm.scale == pytest.approx(1 / (pos + 1) ** 0.5)
        assert layer.self_attention.layer_number == pos + 1
    assert e2.model[0].module.decoder.final_layernorm.scale == 1.0
    assert ident  # the old engine's layers were replaced, positions re-derived


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage reachable from Python (CPU stand-in for
    torch.cuda.memory_allocated)."""
    import gc

    gc.collect()
    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj):
                st = obj.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
        except Exception:
            continue
    return total


@pytest.mark.parametrize("staged", [False, True], ids=["live", "host-staged"])
def test_growth_frees_the_old_model(engine_env, staged):
    base = _live_tensor_bytes()
    e = _engine(4)
    for s in range(2):
        train_step(e, [_batch(s)], 1e-2)
    e = grow(e, get_operator("lidas")(4, 4), host_staging=staged)
    train_step(e, [_batch(5)], 1e-2)
    grown = _live_tensor_bytes() - base
    del e
    after = _live_tensor_bytes()
    # Nothing of either depth survives: no hook, buffer or optimizer keeps the old model alive.
    assert after - base < 0.01 * grown
    fresh = _engine(8)
    train_step(fresh, [_batch(5)], 1e-2)
    assert grown == pytest.approx(_live_tensor_bytes() - after, rel=0.05)


def test_host_staging_frees_the_old_engine_before_building_the_new(engine_env, monkeypatch):
    """The point of staging: when the grown engine is allocated, no parameter, gradient buffer
    or optimizer state of the old one is alive (device peak max(old, new), not old + new)."""
    import gc
    import weakref

    from grow_megatron.engine import grow as manager

    e = _engine(4)
    train_step(e, [_batch(0)], 1e-2)
    old = [weakref.ref(p) for p in e.model[0].module.parameters()]
    old += [weakref.ref(b.grad_data) for b in e.model[0].buffers] + [weakref.ref(e.optimizer)]
    alive_at_build = []
    real_build = manager.build_engine

    def build(*args, **kwargs):
        gc.collect()
        alive_at_build.append(sum(r() is not None for r in old))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(manager, "build_engine", build)
    # The caller's `e` still names the old Engine during grow() (as the training loop's does):
    # staging must empty it, not rely on the caller dropping it.
    e = grow(e, get_operator("lidas")(4, 4), host_staging=True)
    assert alive_at_build == [0]
    assert torch.isfinite(torch.tensor(train_step(e, [_batch(1)], 1e-2)["loss"]))
