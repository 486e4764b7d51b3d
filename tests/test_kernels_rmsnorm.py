"""Fused RMSNorm (+LN-Scaling, +residual) against its PyTorch reference.

Tolerances (kernels/testing.py): fp32 norm-wise relative difference <= 1e-5 from the fp32
reference; bf16/fp16 error against an fp64 reference <= 2x PyTorch's own error on the same
low-precision inputs. Outputs are allocated NaN-filled, so an unwritten element fails.
"""

import math
import zlib

import pytest
import torch

from grow_megatron.kernels import RMSNorm, _utils, rms_norm, rms_norm_ref
from grow_megatron.kernels.testing import compare_kernel, randn, seeded
from kernel_helpers import DEVICE, KERNEL_TEST_MARKS, poison_outputs  # noqa: F401 (fixture)

pytestmark = KERNEL_TEST_MARKS


def test_poison_is_active():
    assert torch.isnan(_utils.empty((3,), torch.float32, DEVICE)).all()


def _case(shape, dtype, residual, seed, w_dtype=None, res_dtype=None):
    g = seeded(seed)
    H = shape[-1]
    x = randn(shape, dtype, g).to(DEVICE)
    # weights away from 1 so a dropped weight or scale shows up
    w = (1.0 + randn((H,), torch.float64, g, 0.5)).to(w_dtype or dtype).to(DEVICE)
    res = randn(shape, res_dtype or dtype, g).to(DEVICE) if residual else None
    n_out = 2 if residual else 1
    upstream = [randn(shape, torch.float64, g).to(DEVICE) for _ in range(n_out)]
    return x, w, res, upstream


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", [(3, 97), (5, 960), (7, 2048), (2, 3, 160)], ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype, residual):
    seed = zlib.crc32(repr((shape, residual, dtype)).encode())
    x, w, res, upstream = _case(shape, dtype, residual, seed)
    scale = 1.0 / math.sqrt(3.0)
    if residual:
        args, diff, names = [x, w, 1e-5, scale, res], [0, 1, 4], ["y", "new_residual", "dx", "dweight", "dresidual"]
    else:
        args, diff, names = [x, w, 1e-5, scale], [0, 1], ["y", "dx", "dweight"]
    failures = compare_kernel(rms_norm, rms_norm_ref, args, diff, upstream, dtype, names)
    assert not failures, failures


def test_fp16_and_mixed_dtypes():
    # fp16 activations with fp32 weight and an fp32 residual stream (megatron's
    # fp32_residual_connection): y stays fp16, the new residual is fp32.
    x, w, res, upstream = _case((6, 130), torch.float16, True, 11, w_dtype=torch.float32, res_dtype=torch.float32)
    y, r = rms_norm(x, w, 1e-6, 0.25, res)
    assert y.dtype == torch.float16 and r.dtype == torch.float32
    failures = compare_kernel(
        rms_norm,
        rms_norm_ref,
        [x, w, 1e-6, 0.25, res],
        [0, 1, 4],
        upstream,
        torch.float16,
        ["y", "new_residual", "dx", "dweight", "dresidual"],
    )
    assert not failures, failures


def test_scale_is_applied_inside():
    x, w, _, _ = _case((4, 64), torch.float32, False, 3)
    y1 = rms_norm(x, w, scale=1.0)
    y2 = rms_norm(x, w, scale=0.5)
    torch.testing.assert_close(y2, 0.5 * y1, rtol=1e-6, atol=1e-6)


def test_many_rows_use_several_programs_in_backward():
    # More row tiles than persistent programs: each program loops and its dweight partial
    # must cover every tile it visited.
    x, w, _, upstream = _case((97, 33), torch.float32, False, 5)
    failures = compare_kernel(
        rms_norm, rms_norm_ref, [x, w, 1e-5, 0.7], [0, 1], upstream, torch.float32, ["y", "dx", "dweight"]
    )
    assert not failures, failures


def test_module_and_non_contiguous_input():
    g = seeded(7)
    base = randn((5, 2, 96), torch.float32, g).to(DEVICE)
    x = base[:, 1, :]  # rows 192 elements apart
    norm = RMSNorm(96, eps=1e-6, scale=0.3).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(1.0 + randn((96,), torch.float32, g, 0.5))
    torch.testing.assert_close(norm(x), rms_norm_ref(x, norm.weight, 1e-6, 0.3), rtol=1e-5, atol=1e-6)


def test_rejects_bad_weight():
    with pytest.raises(ValueError, match="hidden size"):
        rms_norm(torch.randn(2, 8, device=DEVICE), torch.ones(7, device=DEVICE))


def test_residual_with_one_output_unused():
    # Only y feeds the loss (no gradient arrives for the new residual), then only the residual
    # does (no gradient for y): both backward paths must match the reference.
    x, w, res, _ = _case((5, 72), torch.float32, True, 13)
    for pick in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (x, w, res)]
        rms_norm(leaves[0], leaves[1], 1e-5, 0.6, leaves[2])[pick].pow(2).sum().backward()
        ref = [t.clone().requires_grad_() for t in (x, w, res)]
        rms_norm_ref(ref[0], ref[1], 1e-5, 0.6, ref[2])[pick].pow(2).sum().backward()
        for a, b in zip(leaves, ref):
            if b.grad is None:
                assert a.grad is None or torch.count_nonzero(a.grad) == 0
            else:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
