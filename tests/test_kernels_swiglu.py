"""SwiGLU (separate and megatron-fused gate/up) against its PyTorch reference.

Tolerances (kernels/testing.py): fp32 norm-wise relative difference <= 1e-5; bf16 error
against fp64 <= 2x PyTorch's own bf16 error. Outputs are allocated NaN-filled.
"""

import zlib

import pytest
import torch

from grow_megatron.kernels import SwiGLU, swiglu, swiglu_fused, swiglu_fused_ref, swiglu_ref
from grow_megatron.kernels.testing import compare_kernel, randn, seeded
from kernel_helpers import DEVICE, KERNEL_TEST_MARKS, poison_outputs  # noqa: F401 (fixture)

pytestmark = KERNEL_TEST_MARKS

SHAPES = [(3, 97), (5, 960), (7, 2048), (2, 3, 300)]
DTYPES = [torch.float32, torch.bfloat16]


def _seed(*key):
    return zlib.crc32(repr(key).encode())


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_separate_matches_reference(shape, dtype):
    g = seeded(_seed("sep", shape, dtype))
    # gate spread over silu's curved region and both tails
    gate = randn(shape, dtype, g, 3.0).to(DEVICE)
    up = randn(shape, dtype, g).to(DEVICE)
    upstream = [randn(shape, torch.float64, g).to(DEVICE)]
    failures = compare_kernel(swiglu, swiglu_ref, [gate, up], [0, 1], upstream, dtype, ["out", "dgate", "dup"])
    assert not failures, failures


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_matches_reference(shape, dtype):
    g = seeded(_seed("fused", shape, dtype))
    x = randn((*shape[:-1], 2 * shape[-1]), dtype, g, 3.0).to(DEVICE)
    upstream = [randn(shape, torch.float64, g).to(DEVICE)]
    failures = compare_kernel(swiglu_fused, swiglu_fused_ref, [x], [0], upstream, dtype, ["out", "dx"])
    assert not failures, failures


def test_fused_layout_is_gate_then_up():
    g = seeded(1)
    gate, up = randn((4, 33), torch.float32, g).to(DEVICE), randn((4, 33), torch.float32, g).to(DEVICE)
    out = swiglu_fused(torch.cat([gate, up], dim=-1))
    torch.testing.assert_close(out, torch.nn.functional.silu(gate) * up, rtol=1e-5, atol=1e-6)
    swapped = swiglu_fused(torch.cat([up, gate], dim=-1))
    assert not torch.allclose(out, swapped)


def test_non_contiguous_inputs_and_module():
    g = seeded(2)
    big = randn((6, 2, 80), torch.float32, g).to(DEVICE)
    gate, up = big[:, 0, :], big[:, 1, :]  # strided rows
    torch.testing.assert_close(swiglu(gate, up), swiglu_ref(gate, up), rtol=1e-5, atol=1e-6)
    x = randn((3, 5, 64), torch.float32, g).to(DEVICE).transpose(0, 1)  # non-contiguous [5, 3, 64]
    torch.testing.assert_close(SwiGLU()(x), swiglu_fused_ref(x), rtol=1e-5, atol=1e-6)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        swiglu(torch.randn(2, 4, device=DEVICE), torch.randn(2, 5, device=DEVICE))
    with pytest.raises(ValueError):
        swiglu_fused(torch.randn(2, 5, device=DEVICE))
