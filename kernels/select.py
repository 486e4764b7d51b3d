"""Which kernels win at a run's shapes: `model.kernels: auto` turns on only those.

Each kernel is timed against its PyTorch reference (forward + backward, the same inputs, the
run's dtype and shapes: tokens = micro-batch x sequence) on the run's device, with Triton's
own benchmark loop; a kernel is on where its median is below the reference's. Measuring at
start costs about a second on a GPU and answers for this GPU, this torch and these shapes,
which no table written once could. The decision itself (`winners`) is a pure function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

KERNELS = ("rmsnorm", "rope", "swiglu", "loss")
"""The switchable kernels, by the name the run's log gives them."""


@dataclass(frozen=True)
class Shapes:
    tokens: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    seq: int


def winners(timings: dict[str, tuple[float, float]]) -> tuple[str, ...]:
    """The kernels whose time is below their reference's: {name: (kernel_ms, reference_ms)}."""
    return tuple(k for k in KERNELS if k in timings and timings[k][0] < timings[k][1])


def describe(on: tuple[str, ...], timings: dict[str, tuple[float, float]]) -> str:
    """For the run's first note: which kernels are on, and the times that decided
    ("rmsnorm, rope (auto; fwd+bwd ms, kernel vs reference: rmsnorm 0.1 vs 0.2, ...)")."""
    times = ", ".join(f"{k} {timings[k][0]:.3g} vs {timings[k][1]:.3g}" for k in KERNELS if k in timings)
    return f"{', '.join(on) if on else 'off'} (auto; fwd+bwd ms, kernel vs reference: {times})"


def _cases(s: Shapes, dtype, device) -> dict[str, tuple[Callable, Callable, list]]:
    from . import (
        apply_rope,
        apply_rope_ref,
        fused_linear_cross_entropy,
        fused_linear_cross_entropy_ref,
        rms_norm,
        rms_norm_ref,
        rope_cos_sin,
        swiglu_fused,
        swiglu_fused_ref,
    )

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_()

    b = max(1, s.tokens // s.seq)
    cos, sin = rope_cos_sin(s.seq, s.head_dim, device=device)
    targets = torch.randint(0, s.vocab, (s.tokens,), device=device)
    x, w = t(s.tokens, s.hidden), t(s.hidden)
    q, k = t(s.seq, b, s.heads, s.head_dim), t(s.seq, b, s.kv_heads, s.head_dim)
    fc1 = t(s.tokens, 2 * s.ffn)
    h, emb = t(s.tokens, s.hidden), t(s.vocab, s.hidden, scale=0.02)
    return {
        "rmsnorm": (lambda: rms_norm(x, w), lambda: rms_norm_ref(x, w), [x, w]),
        "rope": (
            lambda: sum(o.float().sum() for o in apply_rope(q, k, cos, sin)),
            lambda: sum(o.float().sum() for o in apply_rope_ref(q, k, cos, sin)),
            [q, k],
        ),
        "swiglu": (lambda: swiglu_fused(fc1), lambda: swiglu_fused_ref(fc1), [fc1]),
        "loss": (
            lambda: fused_linear_cross_entropy(h, emb, targets),
            lambda: fused_linear_cross_entropy_ref(h, emb, targets),
            [h, emb],
        ),
    }


def time_kernels(s: Shapes, dtype: torch.dtype, device) -> dict[str, tuple[float, float]]:
    """{kernel: (kernel ms, reference ms)}, forward + backward, medians of triton's do_bench."""
    from triton.testing import do_bench

    out = {}
    for name, (ours, ref, leaves) in _cases(s, dtype, device).items():

        def fwd_bwd(fn=None, leaves=leaves):
            y = fn()
            y.float().sum().backward()

        ms = [do_bench(lambda fn=fn: fwd_bwd(fn), grad_to_none=leaves, warmup=10, rep=40) for fn in (ours, ref)]
        out[name] = (float(ms[0]), float(ms[1]))
    return out
