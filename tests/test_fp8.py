"""model.fp8 on CPU through torchao's emulated float8 matmuls: the scaling math against an
independent reference, the engine's linears converted (layers added by a growth too), the same
checkpoint state as without FP8, and the config refusals."""

import pytest
import torch

from engine_helpers import micro_config, narrow_model, random_batch
from grow_megatron.config.base import ConfigError
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.build import build_engine, run_microbatches
from grow_megatron.engine.grow import grow
from grow_megatron.engine.resolve import engine_spec, planned_layout, resolve_run
from grow_megatron.growth.operators import lidas
from grow_megatron.model.fp8 import Fp8ColumnParallelLinear, Fp8RowParallelLinear, float8_configs, fp8_linear

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _quantize(t: torch.Tensor, dtype, dim=None, pow2=False):
    """Dynamic scaling written out from the recipe's definition: scale = max_fp8 / amax (over
    the whole tensor, or along `dim` per slice), optionally rounded down to a power of two;
    returns the dequantized tensor (what the matmul sees)."""
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = torch.finfo(dtype).max / amax.double().clamp(min=1e-12)
    scale = scale.float()
    if pow2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    q = (t.float() * scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype)
    return q.float() / scale


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 48, generator=g) * torch.logspace(-2, 1, 48)  # columns of very different size
    w = torch.randn(40, 48, generator=g) * 0.05
    go = torch.randn(5, 3, 40, generator=g)
    return x, w, go


def test_tensorwise_matches_the_scaling_math_forward_and_backward():
    x, w, go = _case()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fp8_linear(xr, wr, float8_configs("tensorwise", emulate=True))
    y.backward(go)
    xq, wq, gq = _quantize(x, E4M3), _quantize(w, E4M3), _quantize(go, E5M2)
    torch.testing.assert_close(y, xq @ wq.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xr.grad, gq @ wq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wr.grad, gq.reshape(-1, 40).t() @ xq.reshape(-1, 48), rtol=1e-5, atol=1e-5)
    # and it is FP8: a few per cent off the fp32 product, never equal to it
    err = ((y - x @ w.t()).norm() / (x @ w.t()).norm()).item()
    assert 1e-3 < err < 0.1


def test_rowwise_matches_the_scaling_math_forward():
    x, w, go = _case(1)
    x = x * torch.logspace(-3, 1, 15).reshape(5, 3, 1)  # rows (tokens) of very different size
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fp8_linear(xr, wr, float8_configs("rowwise", emulate=True))
    # rowwise: each input row and each weight row (output channel) its own power-of-two scale
    ref = _quantize(x, E4M3, dim=-1, pow2=True) @ _quantize(w, E4M3, dim=-1, pow2=True).t()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # with rows spread over four decades, one tensorwise scale flushes the small rows: worse
    tw = fp8_linear(x, w, float8_configs("tensorwise", emulate=True))
    exact = x @ w.t()
    assert (y - exact).norm() < (tw - exact).norm()
    y.backward(go)
    for grad, ref_grad in ((xr.grad, go @ w), (wr.grad, go.reshape(-1, 40).t() @ x.reshape(-1, 48))):
        assert ((grad - ref_grad).norm() / ref_grad.norm()).item() < 0.1


V, S = 96, 16
MODEL = narrow_model(4, V, S)


def _engine(fp8, depth=2):
    spec = engine_spec(
        MODEL, V, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0), fp8=fp8, fp8_emulate=fp8 != "off"
    )
    torch.manual_seed(0)  # the embedding's draw (the layers seed themselves)
    return build_engine(spec, depth)


def _fp8_linears(engine):
    return [
        m for c in engine.chunks for m in c.modules() if isinstance(m, (Fp8ColumnParallelLinear, Fp8RowParallelLinear))
    ]


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_engine_linears_are_fp8_also_after_growth_and_state_is_precision_free(engine_env, recipe):
    plain, fp8 = _engine("off"), _engine(recipe)
    assert not _fp8_linears(plain) and len(_fp8_linears(fp8)) == 4 * 2  # qkv, proj, fc1, fc2 per layer
    # same weights (same seed), same checkpoint keys and shapes: nothing FP8 is stored
    sd_plain, sd_fp8 = plain.chunks[0].state_dict(), fp8.chunks[0].state_dict()
    assert sd_plain.keys() == sd_fp8.keys()
    for k, v in sd_plain.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, sd_fp8[k]), k
    batch = random_batch(0, V, S)
    with torch.no_grad():
        l_plain = float(run_microbatches(plain, [batch], forward_only=True))
        l_fp8 = float(run_microbatches(fp8, [batch], forward_only=True))
    assert l_plain != l_fp8 and abs(l_plain - l_fp8) < 0.05 * l_plain
    grown = grow(fp8, lidas(2, 2))
    assert grown.depth == 4 and len(_fp8_linears(grown)) == 4 * 4
    loss = run_microbatches(grown, [batch], forward_only=False)
    assert torch.isfinite(loss)
    assert all(p.main_grad.abs().sum() > 0 for _, p in grown.named_parameters() if "linear" in _)


def test_fp8_config_refusals(tmp_path):
    with pytest.raises(ConfigError, match="model.fp8"):
        micro_config(tmp_path, **{"model.fp8": "blockwise"})
    cfg = micro_config(tmp_path, **{"model.fp8": "tensorwise", "model.vocab_size": 4096})
    with pytest.raises(ConfigError, match="compute capability >= 8.9.*model.fp8_emulate"):
        resolve_run(cfg, planned_layout(cfg, 1), random_tokens=True, device="cpu")
    cfg = micro_config(tmp_path, **{"model.fp8": "rowwise", "model.fp8_emulate": True, "model.vocab_size": 4096})
    run = resolve_run(cfg, planned_layout(cfg, 1), random_tokens=True, device="cpu")
    assert run.spec.fp8 == "rowwise" and run.spec.fp8_emulate and "fp8 rowwise (emulated)" in run.describe()
