"""SwiGLU: silu(gate) * up, forward and backward, for separate or concatenated gate/up.

megatron's gated fc1 produces one [..., 2F] tensor, gate in the first half and up in the
second; `swiglu_fused` reads the two halves in place (a row stride of 2F) instead of splitting
and copying, and its backward writes d gate and d up straight into one [..., 2F] gradient, the
layout fc1's backward expects.

Each program handles BLOCK columns of one row: purely elementwise, so the only goal is to move
bytes at copy speed: wide vector loads (>= 8 bf16 a thread) and enough programs in flight.
Backward recomputes sigmoid from the saved inputs rather than saving silu(gate): recomputing is
free next to memory traffic, and saving would cost an extra [..., F] write and read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_
import triton
import triton.language as tl

from . import _utils
from ._utils import cast


@triton.jit
def _swiglu_fwd_kernel(G, U, O, stride_g, stride_u, stride_o, F, BLOCK: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < F
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(O + row * stride_o + cols, cast(out, O.dtype.element_ty, EMULATE_RTNE), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    DO,
    G,
    U,
    DG,
    DU,
    stride_do,
    stride_g,
    stride_u,
    stride_dg,
    stride_du,
    F,
    BLOCK: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < F
    do = tl.load(DO + row * stride_do + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    # d silu(g)/dg = sig * (1 + g * (1 - sig))
    dg = do * u * sig * (1.0 + g * (1.0 - sig))
    du = do * silu
    tl.store(DG + row * stride_dg + cols, cast(dg, DG.dtype.element_ty, EMULATE_RTNE), mask=mask)
    tl.store(DU + row * stride_du + cols, cast(du, DU.dtype.element_ty, EMULATE_RTNE), mask=mask)


def _block(F: int) -> int:
    # Largest power of two <= 2048 that wastes under a quarter of the last block.
    for b in (2048, 1024, 512, 256):
        if F >= b and (triton.cdiv(F, b) * b - F) * 4 < F:
            return b
    return triton.next_power_of_2(max(F, 16)) if F < 256 else 256


def _launch_fwd(g2, u2, out):
    M, F = g2.shape
    if M == 0 or F == 0:
        return
    B = _block(F)
    _swiglu_fwd_kernel[(M, triton.cdiv(F, B))](
        g2,
        u2,
        out,
        g2.stride(0),
        u2.stride(0),
        out.stride(0),
        F,
        BLOCK=B,
        EMULATE_RTNE=_utils.emulate_rtne(),
        num_warps=max(1, min(8, B // 256)),
    )


def _launch_bwd(do2, g2, u2, dg, du):
    M, F = g2.shape
    if M == 0 or F == 0:
        return
    B = _block(F)
    _swiglu_bwd_kernel[(M, triton.cdiv(F, B))](
        do2,
        g2,
        u2,
        dg,
        du,
        do2.stride(0),
        g2.stride(0),
        u2.stride(0),
        dg.stride(0),
        du.stride(0),
        F,
        BLOCK=B,
        EMULATE_RTNE=_utils.emulate_rtne(),
        num_warps=max(1, min(8, B // 256)),
    )


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        if gate.shape != up.shape:
            raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
        F = gate.shape[-1]
        g2, u2 = _rows(gate, F), _rows(up, F)  # [M, F]
        out = _utils.empty(g2.shape, gate.dtype, gate.device)
        _launch_fwd(g2, u2, out)
        ctx.save_for_backward(g2, u2)
        ctx.shape = gate.shape
        return out.view(gate.shape)

    @staticmethod
    def backward(ctx, dout):
        g2, u2 = ctx.saved_tensors
        do2 = _rows(dout, g2.shape[1])
        dg = _utils.empty(g2.shape, g2.dtype, g2.device)
        du = _utils.empty(u2.shape, u2.dtype, u2.device)
        _launch_bwd(do2, g2, u2, dg, du)
        return dg.view(ctx.shape), du.view(ctx.shape)


class SwiGLUFusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        two_f = x.shape[-1]
        if two_f % 2:
            raise ValueError(f"swiglu_fused needs an even last dimension, got {two_f}")
        F = two_f // 2
        x2 = _rows(x, two_f)  # [M, 2F]
        out = _utils.empty((x2.shape[0], F), x.dtype, x.device)  # [M, F]
        _launch_fwd(x2[:, :F], x2[:, F:], out)
        ctx.save_for_backward(x2)
        ctx.shape = x.shape
        return out.view(*x.shape[:-1], F)

    @staticmethod
    def backward(ctx, dout):
        (x2,) = ctx.saved_tensors
        F = x2.shape[1] // 2
        do2 = _rows(dout, F)
        dx = _utils.empty(x2.shape, x2.dtype, x2.device)  # [M, 2F]
        _launch_bwd(do2, x2[:, :F], x2[:, F:], dx[:, :F], dx[:, F:])
        return dx.view(ctx.shape)


def swiglu(gate, up):
    """silu(gate) * up, elementwise; fp32 math, output in gate's dtype."""
    return SwiGLUFunction.apply(gate, up)


def swiglu_fused(x):
    """SwiGLU of megatron's fused fc1 output x = cat([gate, up], -1): [..., 2F] -> [..., F]."""
    return SwiGLUFusedFunction.apply(x)


def swiglu_ref(gate, up):
    acc = torch.promote_types(gate.dtype, torch.float32)
    return (F_.silu(gate.to(acc)) * up.to(acc)).to(gate.dtype)


def swiglu_fused_ref(x):
    gate, up = torch.chunk(x, 2, dim=-1)
    return swiglu_ref(gate, up)


class SwiGLU(torch.nn.Module):
    """Activation module for a gated MLP: forward(x) with x = cat([gate, up], -1)."""

    def forward(self, x):
        fn = swiglu_fused if _utils.triton_available(x.device) else swiglu_fused_ref
        return fn(x)
