"""Rotary position embedding on q and k in one launch, forward and backward.

Layout is megatron's [s, b, heads, head_dim] (q and k may have different head counts: GQA)
with the rotate-half convention of HF Llama and megatron (non-interleaved):
    out = x * cos + rotate_half(x) * sin,  rotate_half([x1, x2]) = [-x2, x1]
cos/sin are [s, head_dim] (HF builds them as cat(freqs, freqs)); [s, 1, 1, head_dim] is
accepted too. Only the first s rows are used.

One program owns one (position, batch) pair: it loads that position's cos/sin once and
rotates every q head and every k head there, so cos/sin are read once per program and q and k
need no second launch. q and k may be strided views (megatron splits them out of the fused qkv
projection); outputs are contiguous.

rotate-half is linear, out = x*cos + R(x)*sin, so backward is dx = g*cos + R^T(g*sin) with
R^T([v1, v2]) = [v2, -v1]: the same kernel with (sin1, sin2) replaced by (-sin2, -sin1).
cos and sin are treated as constants (no gradient), as they are in every model we build.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _utils
from ._utils import cast


@triton.jit
def _rotate_heads(
    X, O, stride_h, stride_oh, NH, HALF, c1, c2, s1, s2, d, dmask, BLOCK_H: tl.constexpr, EMULATE_RTNE: tl.constexpr
):
    h = tl.arange(0, BLOCK_H)  # [BH]
    mask = (h < NH)[:, None] & dmask[None, :]  # [BH, BD2]
    x_off = h[:, None] * stride_h + d[None, :]
    o_off = h[:, None] * stride_oh + d[None, :]
    x1 = tl.load(X + x_off, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(X + x_off + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * c1[None, :] - x2 * s1[None, :]
    o2 = x2 * c2[None, :] + x1 * s2[None, :]
    tl.store(O + o_off, cast(o1, O.dtype.element_ty, EMULATE_RTNE), mask=mask)
    tl.store(O + o_off + HALF, cast(o2, O.dtype.element_ty, EMULATE_RTNE), mask=mask)


@triton.jit
def _rope_kernel(
    Q,
    K,
    QO,
    KO,
    COS,
    SIN,
    sq_s,
    sq_b,
    sq_h,
    sk_s,
    sk_b,
    sk_h,
    sqo_s,
    sqo_b,
    sqo_h,
    sko_s,
    sko_b,
    sko_h,
    stride_cos,
    stride_sin,
    B,
    HQ,
    HK,
    HALF,
    BACKWARD: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D2: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    pid = tl.program_id(0)
    si = (pid // B).to(tl.int64)
    bi = (pid % B).to(tl.int64)
    d = tl.arange(0, BLOCK_D2)  # [BD2]
    dmask = d < HALF
    c1 = tl.load(COS + si * stride_cos + d, mask=dmask, other=0.0).to(tl.float32)
    c2 = tl.load(COS + si * stride_cos + HALF + d, mask=dmask, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + si * stride_sin + d, mask=dmask, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + si * stride_sin + HALF + d, mask=dmask, other=0.0).to(tl.float32)
    if BACKWARD:
        s1, s2 = -s2, -s1
    _rotate_heads(
        Q + si * sq_s + bi * sq_b,
        QO + si * sqo_s + bi * sqo_b,
        sq_h,
        sqo_h,
        HQ,
        HALF,
        c1,
        c2,
        s1,
        s2,
        d,
        dmask,
        BLOCK_HQ,
        EMULATE_RTNE,
    )
    _rotate_heads(
        K + si * sk_s + bi * sk_b,
        KO + si * sko_s + bi * sko_b,
        sk_h,
        sko_h,
        HK,
        HALF,
        c1,
        c2,
        s1,
        s2,
        d,
        dmask,
        BLOCK_HK,
        EMULATE_RTNE,
    )


def _last_dim_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _cos_sin_rows(t: torch.Tensor, s: int, d: int) -> torch.Tensor:
    if t.shape[-1] != d or any(n != 1 for n in t.shape[1:-1]):
        raise ValueError(f"cos/sin must be [s, {d}] or [s, 1, 1, {d}], got {tuple(t.shape)}")
    t = t.reshape(t.shape[0], d)
    if t.shape[0] < s:
        raise ValueError(f"cos/sin have {t.shape[0]} positions, q has {s}")
    return _last_dim_unit(t[:s])


def _warps(hq: int, hk: int, half: int) -> int:
    # One warp count serves both tiles: size it on the smaller so that each thread still holds
    # 8 contiguous bf16 (one 16-byte load) of it; fewer elements a thread means narrower loads.
    smaller = min(triton.next_power_of_2(hq), triton.next_power_of_2(hk)) * triton.next_power_of_2(half)
    return max(1, min(8, smaller // 256))


def _launch(q, k, cos, sin, backward: bool):
    s, b, hq, d = q.shape
    hk = k.shape[2]
    qo = _utils.empty(q.shape, q.dtype, q.device)
    ko = _utils.empty(k.shape, k.dtype, k.device)
    if s * b == 0:
        return qo, ko
    half = d // 2
    _rope_kernel[(s * b,)](
        q,
        k,
        qo,
        ko,
        cos,
        sin,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        qo.stride(0),
        qo.stride(1),
        qo.stride(2),
        ko.stride(0),
        ko.stride(1),
        ko.stride(2),
        cos.stride(0),
        sin.stride(0),
        b,
        hq,
        hk,
        half,
        BACKWARD=backward,
        BLOCK_HQ=triton.next_power_of_2(hq),
        BLOCK_HK=triton.next_power_of_2(hk),
        BLOCK_D2=triton.next_power_of_2(half),
        EMULATE_RTNE=_utils.emulate_rtne(),
        num_warps=_warps(hq, hk, half),
    )
    return qo, ko


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError("q and k must be [s, b, heads, head_dim]")
        s, b, _, d = q.shape
        if k.shape[0] != s or k.shape[1] != b or k.shape[3] != d:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on s, b or head_dim")
        if d % 2:
            raise ValueError(f"head_dim must be even, got {d}")
        cos2, sin2 = _cos_sin_rows(cos, s, d), _cos_sin_rows(sin, s, d)
        qo, ko = _launch(_last_dim_unit(q), _last_dim_unit(k), cos2, sin2, backward=False)
        ctx.save_for_backward(cos2, sin2)
        ctx.q_meta, ctx.k_meta = (q.shape, q.dtype, q.device), (k.shape, k.dtype, k.device)
        ctx.set_materialize_grads(False)
        return qo, ko

    @staticmethod
    def backward(ctx, dq, dk):
        cos2, sin2 = ctx.saved_tensors
        if dq is None and dk is None:
            return None, None, None, None
        # A missing gradient (output unused) rotates zeros; rare, so no special kernel.
        if dq is None:
            shape, dtype, device = ctx.q_meta
            dq = torch.zeros(shape, dtype=dtype, device=device)
        if dk is None:
            shape, dtype, device = ctx.k_meta
            dk = torch.zeros(shape, dtype=dtype, device=device)
        dqi, dki = _launch(_last_dim_unit(dq), _last_dim_unit(dk), cos2, sin2, backward=True)
        return dqi, dki, None, None


def apply_rope(q, k, cos, sin):
    """Rotate q [s, b, hq, d] and k [s, b, hk, d] by cos/sin [s, d]; returns (q_rot, k_rot)."""
    return RoPEFunction.apply(q, k, cos, sin)


def _rotate(x, c1, c2, s1, s2):
    """x * cos + rotate_half(x) * sin without materialising rotate_half(x): each half is one
    multiply-add, and only the result is concatenated. Bit-identical to transformers'
    `q * cos + cat(-x2, x1) * sin` (negating a product is exact)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c1 - x2 * s1, x2 * c2 + x1 * s2), dim=-1)


def apply_rope_ref(q, k, cos, sin):
    """Plain PyTorch rotate-half RoPE: fp32 math, cast back to the inputs' dtypes."""
    s, d = q.shape[0], q.shape[-1]
    acc = torch.promote_types(q.dtype, torch.float32)
    c = cos.reshape(cos.shape[0], d)[:s].to(acc)[:, None, None, :]  # [s, 1, 1, d]
    sn = sin.reshape(sin.shape[0], d)[:s].to(acc)[:, None, None, :]
    c1, c2 = c.chunk(2, dim=-1)
    s1, s2 = sn.chunk(2, dim=-1)
    return _rotate(q.to(acc), c1, c2, s1, s2).to(q.dtype), _rotate(k.to(acc), c1, c2, s1, s2).to(k.dtype)


def rope_cos_sin(seq_len: int, head_dim: int, base: float = 10000.0, device=None, dtype=torch.float32):
    """cos, sin [seq_len, head_dim] exactly as transformers' Llama computes them (fp32 angles,
    cat(freqs, freqs)), so exported checkpoints give the same logits in transformers; the one
    builder of the model (model/modules.py) and the kernels' tests and benchmarks."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)  # [s, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [s, d]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class RotaryEmbedding(torch.nn.Module):
    """Holds no state: forward(q, k, cos, sin) -> (q_rot, k_rot) with the fused kernel."""

    def forward(self, q, k, cos, sin):
        fn = apply_rope if _utils.triton_available(q.device) else apply_rope_ref
        return fn(q, k, cos, sin)
