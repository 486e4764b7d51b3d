"""Fused linear + cross-entropy against the unfused PyTorch path.

Reference: F.cross_entropy(hidden @ weight.T, targets, reduction='none') with the logits in the
inputs' dtype and the cross-entropy in fp32 (fp64 for the fp64 reference).
Tolerances (kernels/testing.py): fp32 norm-wise relative difference <= 1e-5; bf16 error
against fp64 <= 2x the unfused PyTorch path's own bf16 error. Outputs are allocated NaN-filled.
"""

import pytest
import torch

from grow_megatron.kernels import (
    FusedLinearCrossEntropy,
    fused_linear_cross_entropy,
    fused_linear_cross_entropy_ref,
)
from grow_megatron.kernels.testing import compare_kernel, randn, seeded
from kernel_helpers import DEVICE, KERNEL_TEST_MARKS, poison_outputs  # noqa: F401 (fixture)

pytestmark = KERNEL_TEST_MARKS

N, D, V = 13, 24, 517
IGNORE = -100


def _case(dtype, seed, n=N, d=D, v=V):
    g = seeded(seed)
    hidden = randn((n, d), dtype, g).to(DEVICE)
    # logits of a few units: a peaked but not one-hot softmax
    weight = randn((v, d), dtype, g, 0.5).to(DEVICE)
    targets = torch.randint(0, v, (n,), generator=g).to(DEVICE)
    targets[[1, 6]] = IGNORE
    upstream = [torch.rand((n,), generator=g, dtype=torch.float64).to(DEVICE)]
    return hidden, weight, targets, upstream


# chunk_size 4: forward over 4 token chunks (last one ragged) and backward over 4 vocab chunks
# of 128 plus a ragged one of 5; None: a single chunk each way.
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_reference(dtype, chunk_size):
    hidden, weight, targets, upstream = _case(dtype, 1000 + (chunk_size or 0) + (dtype == torch.bfloat16))
    failures = compare_kernel(
        fused_linear_cross_entropy,
        fused_linear_cross_entropy_ref,
        [hidden, weight, targets, IGNORE, chunk_size],
        [0, 1],
        upstream,
        dtype,
        ["loss", "dhidden", "dweight"],
    )
    assert not failures, failures


def test_ignored_tokens_and_sum_backward():
    hidden, weight, targets, _ = _case(torch.float32, 7)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h1, w1, targets, IGNORE, 5)
    assert loss.dtype == torch.float32 and loss.shape == (N,)
    assert torch.equal(loss[targets == IGNORE], torch.zeros(2, device=DEVICE))
    loss.sum().backward()  # upstream gradient arrives expanded (stride 0)
    assert torch.count_nonzero(h1.grad[targets == IGNORE]) == 0
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    fused_linear_cross_entropy_ref(h2, w2, targets, IGNORE).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_tied_weight_accumulates_with_embedding_grad():
    # The output weight is the input embedding: autograd must add both uses into one grad.
    hidden, weight, targets, _ = _case(torch.float32, 8)
    w = weight.clone().requires_grad_()
    ids = torch.tensor([3, 5, 3, 500], device=DEVICE)
    (fused_linear_cross_entropy(hidden, w, targets).mean() + w[ids].sum()).backward()
    w_ref = weight.clone().requires_grad_()
    (fused_linear_cross_entropy_ref(hidden, w_ref, targets).mean() + w_ref[ids].sum()).backward()
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-6)


def test_weight_without_grad_and_module():
    hidden, weight, targets, _ = _case(torch.float32, 9)
    h = hidden.clone().requires_grad_()
    FusedLinearCrossEntropy(ignore_index=IGNORE, chunk_size=3)(h, weight, targets).sum().backward()
    h_ref = hidden.clone().requires_grad_()
    fused_linear_cross_entropy_ref(h_ref, weight, targets, IGNORE).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)


def test_all_tokens_ignored():
    hidden, weight, targets, _ = _case(torch.float32, 10)
    h = hidden.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, torch.full_like(targets, IGNORE))
    loss.sum().backward()
    assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(h.grad) == 0


def test_rejects_out_of_range_targets():
    hidden, weight, targets, _ = _case(torch.float32, 11)
    targets[0] = V
    with pytest.raises(ValueError, match="targets"):
        fused_linear_cross_entropy(hidden, weight, targets)
