"""SDPA's native grouped-query path (`enable_gqa`) computes what the repeat_interleave path does.

The engine takes the native path only where a fused CUDA kernel accepts it
(model.modules.native_gqa_is_fused); here it is forced on CPU and compared with the repeat path
in fp32 on odd shapes. Both are the same fp32 arithmetic in other orders (the CPU kernels may
differ between the two calls), so outputs and gradients agree to a few ulps: FP32_RTOL (1e-5
norm-wise) leaves room for that and none for a wrong head grouping, which shows up at ~1.
"""

import pytest
import torch

from grow_megatron.kernels.testing import FP32_RTOL, randn, rel_err, seeded
from grow_megatron.model import modules
from grow_megatron.model.modules import causal_attention, native_gqa_is_fused


def _qkv(b, hq, hkv, s, d, seed):
    g = seeded(seed)
    return [
        randn(shape, torch.float32, g).requires_grad_() for shape in ((b, hq, s, d), (b, hkv, s, d), (b, hkv, s, d))
    ]


def _out_and_grads(native, q, k, v, upstream, scale):
    for t in (q, k, v):
        t.grad = None
    out = causal_attention(q, k, v, native_gqa=native, scale=scale)
    out.backward(upstream)
    return [out.detach().clone()] + [t.grad.clone() for t in (q, k, v)]


@pytest.mark.parametrize(
    "b,hq,hkv,s,d",
    [(3, 15, 5, 37, 10), (2, 6, 2, 1, 8), (1, 4, 1, 19, 6), (2, 5, 5, 11, 4)],
    ids=["360m-heads", "one-token", "mqa", "mha"],
)
def test_native_gqa_equals_repeat_path(b, hq, hkv, s, d):
    q, k, v = _qkv(b, hq, hkv, s, d, seed=hq * 1000 + s)
    upstream = randn((b, hq, s, d), torch.float32, seeded(s))
    scale = 0.37  # not 1/sqrt(d): a dropped scale shows up
    native = _out_and_grads(True, q, k, v, upstream, scale)
    repeat = _out_and_grads(False, q, k, v, upstream, scale)
    for name, a, r in zip(["out", "dq", "dk", "dv"], native, repeat):
        assert a.shape == r.shape, name
        assert rel_err(a, r) <= FP32_RTOL, (name, rel_err(a, r))


def test_a_wrong_grouping_would_fail():
    # The comparison above can fail: k/v heads taken in another order (h % hkv instead of
    # h // r) change the output by O(1).
    q, k, v = _qkv(2, 6, 2, 9, 8, seed=5)
    right = causal_attention(q, k, v, native_gqa=False, scale=0.3)
    wrong = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1), is_causal=True, scale=0.3
    )
    assert rel_err(wrong, right) > 0.1


def test_cpu_never_takes_the_native_path():
    # CPU results must stay bit-identical to the repeat path (README's main job).
    q, k, v = _qkv(1, 6, 2, 8, 8, seed=1)
    assert not native_gqa_is_fused(q, k, v, 0.0)


def test_module_with_native_path_forced(monkeypatch):
    """SDPAttention (RoPE, layout, GQA) gives the same output and gradients when the native
    path is forced on CPU."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(
        num_layers=1, hidden_size=60, num_attention_heads=6, num_query_groups=2, attention_dropout=0.0
    )  # dropout draws differ between two calls
    s, b = 13, 3
    g = seeded(7)
    qkv = [randn((s, b, h, 10), torch.float32, g) for h in (6, 2, 2)]
    upstream = randn((s, b, 60), torch.float32, g)

    def run(force):
        if force:
            monkeypatch.setattr(modules, "native_gqa_is_fused", lambda *a: True)
        att = modules.SDPAttention(cfg, 1, None, "self")
        leaves = [t.clone().requires_grad_() for t in qkv]
        out = att(*leaves)
        out.backward(upstream)
        assert list(att._native_gqa_cache.values()) == [force]
        return [out.detach()] + [t.grad for t in leaves]

    repeat, native = run(False), run(True)
    for name, a, r in zip(["out", "dq", "dk", "dv"], native, repeat):
        assert rel_err(a, r) <= FP32_RTOL, (name, rel_err(a, r))
