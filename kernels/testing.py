"""Helpers for checking kernels against references (used by tests and the benchmark)."""

from __future__ import annotations

import torch

# fp32 kernels do the same fp32 arithmetic as the reference in another order: norm-wise
# relative difference stays within a few ulps (~1e-7) of fp32; 1e-5 leaves margin for the
# reduction order of long rows and still catches any real bug (those show up at >= 1e-3).
FP32_RTOL = 1e-5
# Low-precision kernels: norm-wise error against an fp64 reference at most this many times
# the error of the same reference computation run by PyTorch on the low-precision inputs.
LOWP_ERR_RATIO = 2.0


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; NaN anywhere gives NaN (which fails every `<=`)."""
    out, ref = out.detach().double(), ref.detach().double()
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    if denom == 0.0:
        return num
    return num / denom


def poisoned_empty(shape, dtype, device) -> torch.Tensor:
    """Drop-in for `_utils.empty` that fills with NaN, so unwritten outputs cannot pass."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, -1, dtype=dtype, device=device)


def check_against_reference(ours, torch_lowp, ref64, dtype, names) -> list[str]:
    """Compare matched tensors; return a message per failure (empty list: all good).

    ours: our kernel's outputs/grads; torch_lowp: the reference function run by PyTorch on the
    same inputs (same dtype); ref64: the reference on fp64 copies of the inputs.
    fp32: ours must be within FP32_RTOL of torch_lowp. bf16/fp16: ours must be within
    LOWP_ERR_RATIO x PyTorch's own error, both measured against fp64.
    """
    failures = []
    for name, a, b, c in zip(names, ours, torch_lowp, ref64):
        if a.shape != b.shape:
            failures.append(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
            continue
        if a.dtype != b.dtype:
            failures.append(f"{name}: dtype {a.dtype} != {b.dtype}")
            continue
        if dtype == torch.float32:
            e = rel_err(a, b)
            if not e <= FP32_RTOL:
                failures.append(f"{name}: fp32 rel err {e:.3g} > {FP32_RTOL}")
        else:
            e_ours, e_torch = rel_err(a, c), rel_err(b, c)
            # The floor only matters when PyTorch's result is exact (error 0).
            if not e_ours <= LOWP_ERR_RATIO * e_torch + 1e-7:
                failures.append(f"{name}: {dtype} err {e_ours:.3g} > {LOWP_ERR_RATIO} x torch's {e_torch:.3g}")
    return failures


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, gen, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def outputs_and_grads(fn, args, diff, upstream, cast=None, **kwargs):
    """Run fn(*args, **kwargs) and backprop `upstream`; return [*outputs, *grads of args[i] for i in diff].

    args are detached copies (cast to `cast` when given, e.g. torch.float64 for the fp64
    reference); `upstream` are fp64 tensors cast to each output's dtype.
    """
    args = [
        a.detach().to(cast if cast is not None and a.is_floating_point() else a.dtype).clone()
        if isinstance(a, torch.Tensor)
        else a
        for a in args
    ]
    for i in diff:
        args[i].requires_grad_(True)
    outs = fn(*args, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad(outs, [args[i] for i in diff], [u.to(o.dtype) for u, o in zip(upstream, outs)])
    return [o.detach() for o in outs] + list(grads)


def compare_kernel(fn, ref_fn, args, diff, upstream, dtype, names, **kwargs) -> list[str]:
    """Our fn vs ref_fn on the same low-precision args vs ref_fn on fp64 copies."""
    ours = outputs_and_grads(fn, args, diff, upstream, **kwargs)
    lowp = outputs_and_grads(ref_fn, args, diff, upstream, **kwargs)
    ref64 = outputs_and_grads(ref_fn, args, diff, upstream, cast=torch.float64, **kwargs)
    return check_against_reference(ours, lowp, ref64, dtype, names)
