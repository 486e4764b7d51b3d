"""RMSNorm with the LN-Scaling factor fused in, and an optional fused residual add.

y = x / sqrt(mean(x^2) + eps) * weight * scale, where `scale` is LN-Scaling's 1/sqrt(l) for the
layer at depth l. With a residual: r = x + residual is written out (it is the next residual
stream) and y = rmsnorm(r) * weight * scale, all in one pass over memory.

Forward: one program normalizes a [BLOCK_M, BLOCK_H] tile (BLOCK_M rows, a whole row each);
rows live in registers, so each element of x is read once and y written once. 1/rms is saved
per row (4 bytes a row) so that backward does not redo the reduction's load pass.

Backward: a persistent grid (a few programs per SM) walks row tiles; each program keeps its
running partial of dweight in registers and writes one fp32 row of partials at the end; a
second small kernel sums the [programs, H] partials. That keeps dweight off atomics (which
would serialize 16k rows onto H addresses) and off a [rows, H] fp32 temporary (which would
double the backward's traffic), the two slow ways of reducing over rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _utils
from ._utils import cast

# Largest row kept whole in registers; beyond it the tile spills (still correct, slower).
_MAX_FUSED_H = 65536


@triton.jit
def _rms_norm_fwd_kernel(
    X,
    RES,
    Y,
    RES_OUT,
    W,
    RSTD,
    stride_x,
    stride_res,
    stride_y,
    stride_res_out,
    M,
    H,
    eps,
    scale,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    cols = tl.arange(0, BLOCK_H)  # [BH]
    row_mask = rows < M
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]  # [BM, BH]
    # int64 row offsets: 16k rows x 8k cols already passes 2^31 elements' worth of bytes.
    rows64 = rows.to(tl.int64)

    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        res = tl.load(RES + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
        r = cast(x.to(tl.float32) + res.to(tl.float32), RES_OUT.dtype.element_ty, EMULATE_RTNE)
        tl.store(RES_OUT + rows64[:, None] * stride_res_out + cols[None, :], r, mask=mask)
        # Normalize the rounded sum: that is what the next layer's residual holds and what
        # the unfused `r = x + residual; norm(r)` computes.
        xf = r.to(tl.float32)
    else:
        xf = x.to(tl.float32)

    mean_sq = tl.sum(xf * xf, axis=1) / H  # [BM]
    rstd = 1.0 / tl.sqrt(mean_sq + eps)  # [BM]
    tl.store(RSTD + rows, rstd, mask=row_mask)

    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) * scale  # [BH]
    y = xf * rstd[:, None] * w[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], cast(y, Y.dtype.element_ty, EMULATE_RTNE), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DRES_OUT,
    DX,
    DRES_IN,
    DW_PARTIAL,
    stride_dy,
    stride_x,
    stride_dres,
    stride_dx,
    stride_dres_in,
    M,
    H,
    scale,
    HAS_DRES: tl.constexpr,
    SEPARATE_DRES_IN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_H)  # [BH]
    col_mask = cols < H
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) * scale  # [BH]
    dw_acc = tl.zeros([BLOCK_H], dtype=tl.float32)

    num_blocks = tl.cdiv(M, BLOCK_M)
    for blk in range(pid, num_blocks, nprog):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)

        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # Masked rows load rstd 0: their xhat, and so their dweight share, is 0.
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)  # [BM]

        xhat = x * rstd[:, None]
        g = dy * w[None, :]
        # d/dx of x*rstd: rstd * (g - xhat * mean(g * xhat)).
        c = tl.sum(g * xhat, axis=1) / H  # [BM]
        dx = (g - xhat * c[:, None]) * rstd[:, None]
        if HAS_DRES:
            dres = tl.load(DRES_OUT + rows64[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0)
            dx += dres.to(tl.float32)
        tl.store(
            DX + rows64[:, None] * stride_dx + cols[None, :], cast(dx, DX.dtype.element_ty, EMULATE_RTNE), mask=mask
        )
        if SEPARATE_DRES_IN:
            # residual kept in a wider dtype than x: its gradient must not pass through x's.
            tl.store(
                DRES_IN + rows64[:, None] * stride_dres_in + cols[None, :],
                cast(dx, DRES_IN.dtype.element_ty, EMULATE_RTNE),
                mask=mask,
            )
        dw_acc += tl.sum(dy * xhat, axis=0)

    tl.store(DW_PARTIAL + pid * H + cols, dw_acc * scale, mask=col_mask)


@triton.jit
def _sum_partials_kernel(PARTIAL, OUT, P, H, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    # PARTIAL: [P, H] fp32 -> OUT: [H] (OUT's dtype).
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    col_mask = cols < H
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        prow = p0 + tl.arange(0, BLOCK_P)  # [BP]
        m = (prow < P)[:, None] & col_mask[None, :]
        acc += tl.sum(tl.load(PARTIAL + prow[:, None] * H + cols[None, :], mask=m, other=0.0), axis=0)
    tl.store(OUT + cols, cast(acc, OUT.dtype.element_ty, EMULATE_RTNE), mask=col_mask)


def _tile(H: int, elems: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_H): whole rows, about `elems` elements a program."""
    block_h = triton.next_power_of_2(H)
    block_m = max(1, min(16, elems // block_h))
    return block_m, block_h


def _warps(elems: int) -> int:
    # About 16-32 fp32 values a thread per live tile: enough bytes in flight, no spills.
    return max(2, min(16, elems // 512))


def sum_partials(partial: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Column sums of a [P, N] fp32 tensor, as a [N] tensor of `out_dtype`."""
    P, N = partial.shape
    out = _utils.empty((N,), out_dtype, partial.device)
    BLOCK_N, BLOCK_P = sum_partials_blocks(P, N)
    _sum_partials_kernel[(triton.cdiv(N, BLOCK_N),)](
        partial, out, P, N, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, EMULATE_RTNE=_utils.emulate_rtne(), num_warps=4
    )
    return out


def sum_partials_blocks(P: int, N: int) -> tuple[int, int]:
    # Narrow column strips (32 fp32 = one 128-byte line a row) so that H=2048 still spreads
    # over 64 programs; wide wants few programs each looping P/4 times, latency-bound.
    block_n = min(32, triton.next_power_of_2(N))
    block_p = max(1, min(triton.next_power_of_2(P), 4096 // block_n))
    return block_n, block_p


def _rows(t: torch.Tensor, H: int) -> torch.Tensor:
    t = t.reshape(-1, H)  # [M, H]
    return t if t.stride(-1) == 1 else t.contiguous()


def fwd_config(H: int) -> dict:
    """Forward launch: BLOCK_M rows a program (about 4096 elements), warps for 16 values a thread."""
    block_m, block_h = _tile(H, 4096)
    return dict(BLOCK_M=block_m, num_warps=_warps(block_m * block_h))


def bwd_config(H: int) -> dict:
    """Backward launch: ~2048-element tiles at 16 values a thread, and per_sm programs an SM.

    The persistent grid must be resident all at once (a second wave idles SMs at its tail), and
    what hides memory latency is bytes in flight per SM = resident programs x tile. sm_90
    compiles (kernels/aot.py, H=2048) need ~96-150 registers a thread at 16 values a thread, so
    65536 registers hold ~5 four-warp programs (40 KB of x and dy in flight) but only one
    16-warp program with a 4096-element tile (16 KB). Untuned on hardware: see `bench --tune`.
    """
    block_h = triton.next_power_of_2(H)
    block_m = max(1, min(16, 2048 // block_h))
    warps = max(1, min(16, block_m * block_h // 512))
    return dict(BLOCK_M=block_m, num_warps=warps, per_sm=max(1, min(8, 65536 // (96 * 32 * warps))))


def rms_norm_forward(x2, weight, res2, eps: float, scale: float, res_dtype=None, config=None):
    """x2 (and res2): [M, H] with unit column stride -> (y, new residual or None, rstd)."""
    M, H = x2.shape
    dev = x2.device
    y = _utils.empty((M, H), x2.dtype, dev)
    rstd = _utils.empty((M,), torch.float32, dev)
    has_res = res2 is not None
    res_out = _utils.empty((M, H), res_dtype, dev) if has_res else None
    if M > 0:
        cfg = config or fwd_config(H)
        _rms_norm_fwd_kernel[(triton.cdiv(M, cfg["BLOCK_M"]),)](
            x2,
            res2 if has_res else x2,
            y,
            res_out if has_res else y,
            weight,
            rstd,
            x2.stride(0),
            res2.stride(0) if has_res else 0,
            y.stride(0),
            res_out.stride(0) if has_res else 0,
            M,
            H,
            float(eps),
            float(scale),
            HAS_RESIDUAL=has_res,
            BLOCK_M=cfg["BLOCK_M"],
            BLOCK_H=triton.next_power_of_2(H),
            EMULATE_RTNE=_utils.emulate_rtne(),
            num_warps=cfg["num_warps"],
        )
    return y, res_out, rstd


def rms_norm_backward(dy2, inp, weight, rstd, dres2, scale: float, x_dtype, res_dtype=None, config=None):
    """Gradients from [M, H] dy2 (and dres2, the new residual's gradient, or None).

    inp is what forward normalized (x, or x + residual). Returns (dx, dresidual or None, dweight);
    dresidual is dx itself unless res_dtype differs from x_dtype.
    """
    M, H = inp.shape
    dev = inp.device
    dx = _utils.empty((M, H), x_dtype, dev)
    separate = res_dtype is not None and res_dtype != x_dtype
    dres_in = _utils.empty((M, H), res_dtype, dev) if separate else dx
    if M == 0:
        dw = torch.zeros_like(weight)
    else:
        cfg = config or bwd_config(H)
        block_m = cfg["BLOCK_M"]
        nprog = _utils.num_programs_persistent(dev, triton.cdiv(M, block_m), per_sm=cfg["per_sm"])
        partial = _utils.empty((nprog, H), torch.float32, dev)
        has_dres = dres2 is not None
        _rms_norm_bwd_kernel[(nprog,)](
            dy2,
            inp,
            weight,
            rstd,
            dres2 if has_dres else dy2,
            dx,
            dres_in,
            partial,
            dy2.stride(0),
            inp.stride(0),
            dres2.stride(0) if has_dres else 0,
            dx.stride(0),
            dres_in.stride(0),
            M,
            H,
            float(scale),
            HAS_DRES=has_dres,
            SEPARATE_DRES_IN=separate,
            BLOCK_M=block_m,
            BLOCK_H=triton.next_power_of_2(H),
            EMULATE_RTNE=_utils.emulate_rtne(),
            num_warps=cfg["num_warps"],
        )
        dw = sum_partials(partial, weight.dtype)
    return dx, (dres_in if res_dtype is not None else None), dw


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, scale):
        H = x.shape[-1]
        if weight.shape != (H,):
            raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size {H}")
        if H > _MAX_FUSED_H:
            raise ValueError(f"rms_norm kernel supports rows up to {_MAX_FUSED_H} wide, got {H}")
        has_res = residual is not None
        if has_res and residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        res_dtype = torch.promote_types(x.dtype, residual.dtype) if has_res else None
        x2 = _rows(x, H)
        y, res_out, rstd = rms_norm_forward(x2, weight, _rows(residual, H) if has_res else None, eps, scale, res_dtype)
        # Backward needs the normalized input: r when there is a residual, else x.
        ctx.save_for_backward(res_out if has_res else x2, weight, rstd)
        ctx.scale = float(scale)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.res_dtype = residual.dtype if has_res else None
        ctx.set_materialize_grads(False)
        if has_res:
            return y.view(x.shape), res_out.view(x.shape)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy, dres_out=None):
        inp, weight, rstd = ctx.saved_tensors
        H = inp.shape[1]
        if dy is None:
            dy = torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=inp.device)
        dres2 = _rows(dres_out, H) if dres_out is not None else None
        # One buffer serves as d x and d residual when their dtypes agree (flash-attn does the
        # same): the two gradients are equal, and a second copy would cost a full extra write.
        dx, dres, dw = rms_norm_backward(_rows(dy, H), inp, weight, rstd, dres2, ctx.scale, ctx.x_dtype, ctx.res_dtype)
        return dx.view(ctx.x_shape), dw, (dres.view(ctx.x_shape) if dres is not None else None), None, None


def rms_norm(x, weight, eps=1e-5, scale=1.0, residual=None):
    """Fused RMSNorm(x [+ residual]) * weight * scale over the last dimension.

    x: [..., H] (bf16/fp16/fp32, fp32 math); weight: [H]; scale: python float (LN-Scaling).
    Returns y (x's dtype), or (y, x + residual) when `residual` is given.
    """
    return RMSNormFunction.apply(x, weight, residual, eps, scale)


def rms_norm_ref(x, weight, eps=1e-5, scale=1.0, residual=None):
    """Plain PyTorch version of `rms_norm`, rounded as transformers' LlamaRMSNorm rounds: the
    statistics and the normalisation in fp32 (fp64 for fp64 inputs), cast to x's dtype, and
    only then multiplied by the weight (then by the LN-Scaling factor). The one reference of
    RMSNorm: the model's path without kernels runs it and the kernel's tests compare against it
    (the kernel applies the weight before its single rounding, which a low-precision test
    allows: it is at least as close to the fp64 result)."""
    inp = x if residual is None else x + residual
    acc = torch.promote_types(inp.dtype, torch.float32)
    y = F.rms_norm(inp.to(acc), (inp.shape[-1],), eps=eps).to(x.dtype)
    y = (weight * y).to(x.dtype)
    if scale != 1.0:
        y = y * scale
    return y if residual is None else (y, inp)


class RMSNorm(torch.nn.Module):
    """RMSNorm with a fixed LN-Scaling factor; forward(x, residual=None) as `rms_norm`.

    Falls back to the PyTorch reference where Triton cannot run (CPU without the interpreter).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.scale = scale
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x, residual=None):
        fn = rms_norm if _utils.triton_available(x.device) else rms_norm_ref
        return fn(x, self.weight, self.eps, self.scale, residual)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, scale={self.scale}"
