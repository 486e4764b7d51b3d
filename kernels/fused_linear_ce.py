"""Fused output projection + cross-entropy that never materializes the [tokens, vocab] logits.

loss[i] = logsumexp(h_i @ W^T) - (h_i @ W^T)[t_i]   (fp32, reduction none, 0 where t_i == ignore)

Forward walks token chunks: one GEMM writes a [chunk, V] logits block (compute dtype), and a
Triton kernel makes one pass over each row with an online max/sum-exp to get lse and the loss.
Only lse [N] fp32 is kept for backward.

Why backward recomputes the logits instead of forming the gradient during forward (Liger's
trick): with reduction='none' the upstream gradient g is per token, and
    dW = sum_i g_i (softmax_i - onehot_i) h_i^T
cannot be formed before g is known except by storing softmax - onehot, which is [N, V]: the very
tensor this op exists to avoid. So forward does 1 GEMM and backward 3 (logits again, dh, dW):
one GEMM more than the unfused path, paid back by skipping its ~10 full passes over [N, V]
fp32 logits (cast, log_softmax, its backward, cast back) and by forward-only use (eval) doing
no gradient work at all.

Backward walks vocab chunks, not token chunks: with lse known, any [N, Vc] block of the
softmax is computable on its own. Then each dW[v-chunk] = grad_block^T @ h is one GEMM that
reduces over all N tokens inside the GEMM (fp32 accumulation, one rounding, written once),
and only dh [N, d] needs accumulating across chunks; N*d is smaller than V*d for our shapes
(16k tokens vs 49k vocab), so the fp32 accumulator and its traffic are 3x smaller than
accumulating dW over token chunks would be.

Memory: one chunk buffer (default 2^27 elements: 256 MiB in bf16) + lse + the dh
accumulator (N*d fp32), against the unfused path's [N, V] logits in bf16, their fp32 copy,
log_softmax output and gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _utils
from ._utils import cast

# Elements of the logits chunk buffer when chunk_size is not given.
_DEFAULT_CHUNK_ELEMS = 1 << 27


@triton.jit
def _ce_fwd_kernel(LOGITS, TARGET, LOSS, LSE, stride_l, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_l
    m = tl.zeros([], dtype=tl.float32) - float("inf")
    s = tl.zeros([], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # [BV]
        x = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(TARGET + row)
    valid = t != ignore_index
    x_t = tl.load(base + tl.where(valid, t, 0)).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_t, 0.0))
    tl.store(LSE + row, lse)


@triton.jit
def _ce_bwd_kernel(
    LOGITS,
    TARGET,
    LSE,
    GRAD_LOSS,
    stride_l,
    stride_g,
    Vc,
    v_start,
    ignore_index,
    BLOCK_V: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    # In place: a [N, Vc] block of logits becomes g_i * (softmax - onehot) for vocab v_start + col.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV]
    mask = cols < Vc
    ptr = LOGITS + row * stride_l + cols
    x = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(TARGET + row)
    g = tl.load(GRAD_LOSS + row * stride_g).to(tl.float32)
    g = tl.where(t != ignore_index, g, 0.0)
    lse = tl.load(LSE + row)
    p = tl.exp(x - lse)
    onehot = tl.where(cols + v_start == t, 1.0, 0.0)
    tl.store(ptr, cast((p - onehot) * g, LOGITS.dtype.element_ty, EMULATE_RTNE), mask=mask)


def _round_rows(n: int) -> int:
    # GEMM-friendly chunk edges (multiples of 128) once chunks are that large.
    return n if n < 128 else n - n % 128


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b with fp32 accumulation across calls."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    if acc.is_cuda:
        try:
            # bf16 operands, fp32 C and D in cuBLAS: no rounding of the partial sums.
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError):
            acc.add_(torch.mm(a, b))  # older torch: one bf16 rounding per chunk
            return
    # CPU (tests, interpreter): speed is no concern; match the CUDA path's fp32 accumulation.
    acc.addmm_(a.float(), b.float())


def _check_targets(targets: torch.Tensor, V: int, ignore_index: int) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bool(bad.any()):
        raise ValueError(f"targets must be in [0, {V}) or equal ignore_index={ignore_index}")


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_size):
        if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
            raise ValueError(
                f"need hidden [N, d] and weight [V, d], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
            )
        N, _ = hidden.shape
        V = weight.shape[0]
        targets = targets.reshape(-1).contiguous()
        if targets.shape[0] != N:
            raise ValueError(f"{targets.shape[0]} targets for {N} tokens")
        _check_targets(targets, V, ignore_index)
        dev = hidden.device
        loss = _utils.empty((N,), torch.float32, dev)
        lse = _utils.empty((N,), torch.float32, dev)
        rows = chunk_size if chunk_size is not None else _round_rows(max(1, _DEFAULT_CHUNK_ELEMS // V))
        rows = max(1, min(N, rows))
        with torch.autocast(dev.type, enabled=False):
            w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
            if N > 0:
                buf = _utils.empty((rows, V), hidden.dtype, dev)  # [rows, V]
                block_v = min(4096, triton.next_power_of_2(V))
                for start in range(0, N, rows):
                    end = min(N, start + rows)
                    logits = buf[: end - start]
                    torch.mm(hidden[start:end], w.t(), out=logits)
                    _ce_fwd_kernel[(end - start,)](
                        logits,
                        targets[start:end],
                        loss[start:end],
                        lse[start:end],
                        logits.stride(0),
                        V,
                        ignore_index,
                        BLOCK_V=block_v,
                        num_warps=8 if block_v >= 2048 else 4,
                    )
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.ignore_index = ignore_index
        # Same element budget for backward's [N, Vc] blocks as forward's [rows, V] ones.
        ctx.chunk_elems = rows * V if chunk_size is not None else _DEFAULT_CHUNK_ELEMS
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, d = hidden.shape
        V = weight.shape[0]
        dev = hidden.device
        dh = dw = None
        if N == 0 or not (need_h or need_w):
            return (
                torch.zeros_like(hidden) if need_h else None,
                torch.zeros_like(weight) if need_w else None,
                None,
                None,
                None,
            )
        # grad_loss of a .sum() arrives expanded (stride 0): index it by its stride, no copy.
        vc = max(1, min(V, _round_rows(max(1, ctx.chunk_elems // N))))
        with torch.autocast(dev.type, enabled=False):
            w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
            dh_acc = torch.zeros((N, d), dtype=torch.float32, device=dev) if need_h else None
            if need_w:
                dw = _utils.empty((V, d), weight.dtype, dev)
            buf = _utils.empty((N * vc,), hidden.dtype, dev)
            block_v = min(2048, triton.next_power_of_2(vc))
            for vs in range(0, V, vc):
                ve = min(V, vs + vc)
                n_v = ve - vs
                block = buf[: N * n_v].view(N, n_v)  # [N, n_v], contiguous even for the last chunk
                w_c = w[vs:ve]  # [n_v, d]
                torch.mm(hidden, w_c.t(), out=block)
                _ce_bwd_kernel[(N, triton.cdiv(n_v, block_v))](
                    block,
                    targets,
                    lse,
                    grad_loss,
                    block.stride(0),
                    grad_loss.stride(0),
                    n_v,
                    vs,
                    ctx.ignore_index,
                    BLOCK_V=block_v,
                    EMULATE_RTNE=_utils.emulate_rtne(),
                    num_warps=8 if block_v >= 2048 else 4,
                )
                if need_w:
                    if dw.dtype == block.dtype:
                        torch.mm(block.t(), hidden, out=dw[vs:ve])
                    else:
                        dw[vs:ve].copy_(torch.mm(block.t(), hidden))
                if need_h:
                    _addmm_fp32(dh_acc, block, w_c)
            if need_h:
                dh = dh_acc.to(hidden.dtype)
        return dh, dw, None, None, None


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index=-100, chunk_size=None):
    """Per-token CE of hidden [N, d] @ weight[V, d]^T against targets [N] -> loss [N] fp32.

    reduction='none'; tokens with target == ignore_index get 0 loss and 0 gradient. The logits
    are computed chunk_size tokens at a time (default: about 2^27 logits per chunk).
    """
    return FusedLinearCrossEntropyFunction.apply(hidden, weight, targets, ignore_index, chunk_size)


def fused_linear_cross_entropy_ref(hidden, weight, targets, ignore_index=-100, chunk_size=None):
    """Unfused PyTorch: logits in the inputs' dtype, cross-entropy in fp32."""
    logits = hidden @ weight.t()  # [N, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index)


class FusedLinearCrossEntropy(torch.nn.Module):
    """forward(hidden [N, d], weight [V, d], targets [N]) -> per-token loss [N] (fp32)."""

    def __init__(self, ignore_index: int = -100, chunk_size: int | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size

    def forward(self, hidden, weight, targets):
        fn = fused_linear_cross_entropy if _utils.triton_available(hidden.device) else fused_linear_cross_entropy_ref
        return fn(hidden, weight, targets, self.ignore_index, self.chunk_size)
