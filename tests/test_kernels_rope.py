"""RoPE on q and k (one launch) against its PyTorch reference, megatron layout [s, b, h, d].

Tolerances (kernels/testing.py): fp32 norm-wise relative difference <= 1e-5; bf16 error
against fp64 <= 2x PyTorch's own bf16 error. Outputs are allocated NaN-filled.
"""

import zlib

import pytest
import torch

from grow_megatron.kernels import RotaryEmbedding, apply_rope, apply_rope_ref, rope_cos_sin
from grow_megatron.kernels.testing import compare_kernel, randn, seeded
from kernel_helpers import DEVICE, KERNEL_TEST_MARKS, poison_outputs  # noqa: F401 (fixture)

pytestmark = KERNEL_TEST_MARKS


def _qk_from_fused(s, b, hq, hk, d, dtype, g):
    # q and k as megatron gets them: strided views into one fused qkv projection output.
    qkv = randn((s, b, hq + 2 * hk, d), dtype, g).to(DEVICE)
    return qkv[:, :, :hq], qkv[:, :, hq : hq + hk]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "s,b,hq,hk,d", [(5, 3, 6, 2, 64), (7, 2, 3, 3, 10), (4, 1, 5, 1, 128)], ids=["gqa-64", "mha-10", "mqa-128"]
)
def test_matches_reference(s, b, hq, hk, d, dtype):
    g = seeded(zlib.crc32(repr((s, b, hq, hk, d, dtype)).encode()))
    q, k = _qk_from_fused(s, b, hq, hk, d, dtype, g)
    # more positions than the sequence (only the first s are used); large positions make
    # sin/cos cover the whole circle
    cos, sin = rope_cos_sin(s + 3, d, base=10.0, device=DEVICE)
    upstream = [randn(q.shape, torch.float64, g).to(DEVICE), randn(k.shape, torch.float64, g).to(DEVICE)]
    failures = compare_kernel(
        apply_rope, apply_rope_ref, [q, k, cos, sin], [0, 1], upstream, dtype, ["q_rot", "k_rot", "dq", "dk"]
    )
    assert not failures, failures


def test_arbitrary_cos_sin_and_megatron_shape():
    # cos/sin not derived from one angle (halves differ): checks each half uses its own columns,
    # in forward and in the transposed rotation of backward.
    g = seeded(3)
    s, b, h, d = 6, 2, 3, 16
    q, k = _qk_from_fused(s, b, h, h, d, torch.float32, g)
    cos = randn((s, 1, 1, d), torch.float32, g).to(DEVICE)
    sin = randn((s, 1, 1, d), torch.float32, g).to(DEVICE)
    upstream = [randn(q.shape, torch.float64, g).to(DEVICE), randn(k.shape, torch.float64, g).to(DEVICE)]
    failures = compare_kernel(
        apply_rope, apply_rope_ref, [q, k, cos, sin], [0, 1], upstream, torch.float32, ["q_rot", "k_rot", "dq", "dk"]
    )
    assert not failures, failures


def test_only_q_used_in_loss():
    g = seeded(4)
    q, k = _qk_from_fused(3, 2, 4, 2, 8, torch.float32, g)
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    cos, sin = rope_cos_sin(3, 8, device=DEVICE)
    qr, _ = RotaryEmbedding()(q, k, cos, sin)
    qr.pow(2).sum().backward()
    q2 = q.detach().clone().requires_grad_()
    apply_rope_ref(q2, k.detach(), cos, sin)[0].pow(2).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad, rtol=1e-5, atol=1e-6)
    assert k.grad is not None and torch.count_nonzero(k.grad) == 0


def test_rejects_mismatched_shapes():
    cos, sin = rope_cos_sin(4, 8, device=DEVICE)
    with pytest.raises(ValueError):
        apply_rope(torch.randn(4, 1, 2, 8, device=DEVICE), torch.randn(4, 1, 2, 6, device=DEVICE), cos, sin)
    with pytest.raises(ValueError):
        apply_rope(torch.randn(5, 1, 2, 8, device=DEVICE), torch.randn(5, 1, 2, 8, device=DEVICE), cos, sin)
