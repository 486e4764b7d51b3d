"""Benchmark of our kernels against torch eager, torch.compile and Liger-Kernel (tools/bench_kernels.py).

On a CUDA GPU: bf16, SmolLM-360M/1.7B shapes, `triton.testing.do_bench` medians, forward and
forward+backward, GB/s over the minimum bytes each op must move, device copy bandwidth first,
peak memory for the loss, and the issue's targets checked at the end. `--dry-run` pushes tiny
shapes through the same code on CPU (Triton interpreter) to check the script, not to time it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

EXIT_NO_GPU = 2
BF16 = 2  # bytes

# (full-size shape, dry-run shape or None)
# A dry run uses only the first entry's tiny shape: the interpreter costs ~0.1 s a launch.
RMSNORM_SHAPES = (((16384, 960), (6, 96)), ((16384, 2048), None))
SWIGLU_SHAPES = (((16384, 2560), (3, 80)), ((16384, 8192), None))
# (s, b, hq, hk, d)
ROPE_SHAPES = (((2048, 8, 15, 5, 64), (4, 2, 3, 1, 16)), ((2048, 8, 32, 32, 64), None))
# (tokens, vocab, hidden)
CE_SHAPES = (((16384, 49152, 960), (6, 70, 16)), ((16384, 49152, 2048), None))


def _shapes(table, dry):
    return [small for _, small in table if small is not None] if dry else [full for full, _ in table]


def _parse(argv):
    p = argparse.ArgumentParser(prog="bench_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="kernel_bench.json", help="JSON results path")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny shapes on CPU through the Triton interpreter: checks the script, times nothing useful",
    )
    p.add_argument("--only", default="", help="comma list among rmsnorm,swiglu,rope,ce (default: all)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--tune", action="store_true", help="also sweep RMSNorm launch parameters")
    p.add_argument(
        "--graph",
        action="store_true",
        help="time CUDA-graph replays (removes host launch overhead, which matters at ~0.1 ms)",
    )
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=200.0)
    return p.parse_args(argv)


class _Timer:
    """do_bench on CUDA (or do_bench_cudagraph: no host launch gaps between kernels of ~0.1 ms);
    one plain call on CPU (dry run: the interpreter's time means nothing)."""

    def __init__(self, cuda: bool, warmup_ms: float, rep_ms: float, graph: bool = False):
        self.cuda, self.warmup_ms, self.rep_ms, self.graph = cuda, warmup_ms, rep_ms, graph

    def __call__(self, fn, grad_to_none=None) -> float:
        if self.cuda:
            import triton.testing

            if self.graph:
                return float(
                    triton.testing.do_bench_cudagraph(
                        fn, rep=self.rep_ms, grad_to_none=grad_to_none, return_mode="median"
                    )
                )
            return float(
                triton.testing.do_bench(
                    fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=grad_to_none, return_mode="median"
                )
            )
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


def _copy_bandwidth(dev, timer, dry) -> float:
    """Device-to-device copy GB/s counting bytes read plus written (the bandwidth ceiling)."""
    n = (1 << 16) if dry else (1 << 29)  # 1 GiB of bf16 on GPU: well past L2
    src = torch.randn(n, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * n * BF16 / (ms * 1e-3) / 1e9


def _liger():
    """Liger-Kernel's autograd Functions, or (None, reason). Each is imported on its own: the
    fused linear CE comes through liger_kernel.transformers, whose imports depend on the
    installed transformers, and its failure must not lose the other three columns."""
    try:
        import liger_kernel  # noqa: F401
    except Exception as e:  # not installed
        return None, f"Liger-Kernel not importable ({type(e).__name__}: {e}); carry its wheel to compare"
    try:
        from importlib.metadata import version

        ver = version("liger-kernel")
    except Exception:  # metadata missing (a bare PYTHONPATH copy): the module's own, if any
        ver = getattr(liger_kernel, "__version__", "?")
    out, missing = dict(version=ver), []
    imports = dict(
        rms_norm=("liger_kernel.ops.rms_norm", "LigerRMSNormFunction"),
        rope=("liger_kernel.ops.rope", "LigerRopeFunction"),
        swiglu=("liger_kernel.ops.swiglu", "LigerSiLUMulFunction"),
        flce=("liger_kernel.transformers.functional", "liger_fused_linear_cross_entropy"),
    )
    import importlib

    for key, (mod, attr) in imports.items():
        try:
            obj = getattr(importlib.import_module(mod), attr)
            out[key] = obj if key == "flce" else obj.apply
        except Exception as e:  # an API this script does not know: that column stays empty
            missing.append(f"{mod}.{attr} ({type(e).__name__}: {e})")
    return out, ("Liger-Kernel " + ver + ": not importable: " + "; ".join(missing)) if missing else None


def _compile(fn, enabled: bool):
    if not enabled:
        return None
    return torch.compile(fn)


def _fwd_bwd(fn, inputs, grads):
    def run():
        outs = fn()
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, grads)

    return run


def _record(results, kernel, shape, provider, mode, ms=None, nbytes=None, copy_gbps=None, note="", **extra):
    row = dict(
        kernel=kernel, shape=list(shape), provider=provider, mode=mode, ms=ms, gbps=None, pct_of_copy=None, note=note
    )
    if ms is not None and nbytes is not None:
        row["gbps"] = nbytes / (ms * 1e-3) / 1e9
        if copy_gbps:
            row["pct_of_copy"] = 100.0 * row["gbps"] / copy_gbps
    row.update(extra)
    results.append(row)
    return row


def _run_provider(
    results, kernel, shape, provider, fwd, fwd_bwd, bytes_fwd, bytes_fb, timer, copy_gbps, grad_to_none, note=""
):
    """Time one provider forward and forward+backward; a failure becomes a row with its reason."""
    for mode, fn, nbytes in (("fwd", fwd, bytes_fwd), ("fwd+bwd", fwd_bwd, bytes_fb)):
        try:
            ms = timer(fn, grad_to_none=grad_to_none if mode == "fwd+bwd" else None)
            _record(results, kernel, shape, provider, mode, ms, nbytes, copy_gbps, note)
        except Exception as e:
            _record(results, kernel, shape, provider, mode, note=f"failed: {type(e).__name__}: {str(e)[:200]}")


def _check(results, kernel, shape, ours, ref, names):
    """Our outputs/grads against eager's at the benchmark shape: GPU-only bugs show here."""
    from .testing import rel_err

    errs = {n: rel_err(a, b) for n, a, b in zip(names, ours, ref)}
    _record(results, kernel, shape, "ours", "check", note="rel err vs eager (bf16 vs bf16)", rel_err=errs)


def _grads_of(fn, leaves, upstream):
    for t in leaves:
        t.grad = None
    outs = fn()
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, upstream)
    res = [o.detach().float() for o in outs] + [t.grad.detach().float().clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return res


def bench_rmsnorm(results, dev, timer, copy_gbps, dry, compile_on, liger):
    from . import rms_norm, rms_norm_ref

    scale = 1.0 / math.sqrt(12.0)  # an LN-Scaling factor; Liger has none (fold into weight)
    ref_c = _compile(rms_norm_ref, compile_on)
    for M, H in _shapes(RMSNORM_SHAPES, dry):
        x = torch.randn(M, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = (1 + 0.1 * torch.randn(H, device=dev)).to(torch.bfloat16).requires_grad_()
        dy = torch.randn(M, H, device=dev, dtype=torch.bfloat16)
        b_fwd, b_fb = 2 * M * H * BF16, 5 * M * H * BF16  # fwd: x, y; bwd: x, dy, dx
        provs = [
            ("ours", lambda: rms_norm(x, w, 1e-5, scale), dy),
            ("eager", lambda: rms_norm_ref(x, w, 1e-5, scale), dy),
        ]
        if ref_c is not None:
            provs.append(("torch.compile", lambda: ref_c(x, w, 1e-5, scale), dy))
        if liger is not None and "rms_norm" in liger:
            # Liger's backward writes dx over dy (in_place): give it its own upstream buffer.
            provs.append((f"liger {liger['version']}", lambda: liger["rms_norm"](x, w, 1e-5), dy.clone()))
        _check(
            results,
            "rmsnorm",
            (M, H),
            _grads_of(provs[0][1], [x, w], [dy]),
            _grads_of(provs[1][1], [x, w], [dy]),
            ["y", "dx", "dw"],
        )
        for name, fn, up in provs:
            _run_provider(
                results, "rmsnorm", (M, H), name, fn, _fwd_bwd(fn, [x, w], [up]), b_fwd, b_fb, timer, copy_gbps, [x, w]
            )


def bench_swiglu(results, dev, timer, copy_gbps, dry, compile_on, liger):
    from . import swiglu, swiglu_fused, swiglu_ref

    ref_c = _compile(swiglu_ref, compile_on)
    for M, F in _shapes(SWIGLU_SHAPES, dry):
        a = torch.randn(M, F, device=dev, dtype=torch.bfloat16, requires_grad=True)
        b = torch.randn(M, F, device=dev, dtype=torch.bfloat16, requires_grad=True)
        x = torch.randn(M, 2 * F, device=dev, dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(M, F, device=dev, dtype=torch.bfloat16)
        b_fwd, b_fb = 3 * M * F * BF16, 8 * M * F * BF16  # fwd: a, b, out; bwd: do, a, b, da, db
        provs = [("ours", lambda: swiglu(a, b), [a, b]), ("eager", lambda: swiglu_ref(a, b), [a, b])]
        if ref_c is not None:
            provs.append(("torch.compile", lambda: ref_c(a, b), [a, b]))
        if liger is not None and "swiglu" in liger:
            provs.append((f"liger {liger['version']}", lambda: liger["swiglu"](a, b), [a, b]))
        provs.append(("ours fused [M,2F]", lambda: swiglu_fused(x), [x]))
        _check(
            results,
            "swiglu",
            (M, F),
            _grads_of(provs[0][1], [a, b], [do]),
            _grads_of(provs[1][1], [a, b], [do]),
            ["out", "da", "db"],
        )
        for name, fn, leaves in provs:
            _run_provider(
                results, "swiglu", (M, F), name, fn, _fwd_bwd(fn, leaves, [do]), b_fwd, b_fb, timer, copy_gbps, leaves
            )


def bench_rope(results, dev, timer, copy_gbps, dry, compile_on, liger):
    from . import apply_rope, apply_rope_ref, rope_cos_sin

    ref_c = _compile(apply_rope_ref, compile_on)
    for s, b, hq, hk, d in _shapes(ROPE_SHAPES, dry):
        q = torch.randn(s, b, hq, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(s, b, hk, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        cos, sin = rope_cos_sin(s, d, device=dev, dtype=torch.bfloat16)
        dq, dk = torch.randn_like(q), torch.randn_like(k)
        n = (hq + hk) * s * b * d
        b_fwd, b_fb = 2 * n * BF16, 4 * n * BF16
        provs = [
            ("ours", lambda: apply_rope(q, k, cos, sin), [q, k], [dq, dk]),
            ("eager", lambda: apply_rope_ref(q, k, cos, sin), [q, k], [dq, dk]),
        ]
        if ref_c is not None:
            provs.append(("torch.compile", lambda: ref_c(q, k, cos, sin), [q, k], [dq, dk]))
        if liger is not None and "rope" in liger:
            # Liger takes HF's q/k: [b, h, s, d] views of [b, s, h, d] storage (the projection's
            # output, transposed), cos/sin [1, s, d]. Same bytes, its own layout.
            qh = q.detach().transpose(0, 1).contiguous().transpose(1, 2).requires_grad_()
            kh = k.detach().transpose(0, 1).contiguous().transpose(1, 2).requires_grad_()
            dqh, dkh = dq.transpose(0, 1).transpose(1, 2), dk.transpose(0, 1).transpose(1, 2)
            c1, s1 = cos[None], sin[None]
            provs.append((f"liger {liger['version']}", lambda: liger["rope"](qh, kh, c1, s1), [qh, kh], [dqh, dkh]))
        _check(
            results,
            "rope",
            (s, b, hq, hk, d),
            _grads_of(provs[0][1], [q, k], [dq, dk]),
            _grads_of(provs[1][1], [q, k], [dq, dk]),
            ["q", "k", "dq", "dk"],
        )
        for name, fn, leaves, ups in provs:
            _run_provider(
                results,
                "rope",
                (s, b, hq, hk, d),
                name,
                fn,
                _fwd_bwd(fn, leaves, ups),
                b_fwd,
                b_fb,
                timer,
                copy_gbps,
                leaves,
            )


def _peak_mib(fn, dev) -> float | None:
    """Peak memory above what was allocated before one call of fn (CUDA only)."""
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


def bench_ce(results, dev, timer, copy_gbps, dry, compile_on, liger):
    from . import fused_linear_cross_entropy, fused_linear_cross_entropy_ref

    ref_c = _compile(fused_linear_cross_entropy_ref, compile_on)
    for N, V, D in _shapes(CE_SHAPES, dry):
        h = (torch.randn(N, D, device=dev) / math.sqrt(D) * 4).to(torch.bfloat16).requires_grad_()
        w = torch.randn(V, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        t = torch.randint(0, V, (N,), device=dev)
        t[::17] = -100
        # The loss as training uses it: the mean over tokens (a uniform per-token upstream grad).
        provs = [
            ("ours", lambda: fused_linear_cross_entropy(h, w, t).mean()),
            ("eager (unfused)", lambda: fused_linear_cross_entropy_ref(h, w, t).mean()),
        ]
        if ref_c is not None:
            provs.append(("torch.compile", lambda: ref_c(h, w, t).mean()))
        if liger is not None and "flce" in liger:
            provs.append(
                (f"liger {liger['version']}", lambda: liger["flce"](h, w, t, ignore_index=-100, reduction="sum") / N)
            )
        one = torch.ones((), device=dev)
        _check(
            results,
            "fused_linear_ce",
            (N, V, D),
            _grads_of(provs[0][1], [h, w], [one]),
            _grads_of(provs[1][1], [h, w], [one]),
            ["loss", "dh", "dw"],
        )
        flops_unfused = 3 * 2 * N * V * D
        for name, fn in provs:
            fb = _fwd_bwd(fn, [h, w], [one])
            try:
                fb()  # warm-up: torch.compile and autotuning allocate on their first call
                h.grad = w.grad = None
                peak = _peak_mib(fb, dev)
            except Exception as e:
                peak, name = None, name + f" (peak failed: {type(e).__name__})"
            rows_before = len(results)
            _run_provider(results, "fused_linear_ce", (N, V, D), name, fn, fb, None, None, timer, copy_gbps, [h, w])
            for row in results[rows_before:]:
                if row["mode"] == "fwd+bwd":
                    row["peak_mib"] = peak
                    if row["ms"]:
                        row["tflops_unfused_equiv"] = flops_unfused / (row["ms"] * 1e-3) / 1e12


def tune_rmsnorm(results, dev, timer, copy_gbps, dry):
    """Sweep the RMSNorm launch parameters (the defaults are chosen from compiler reports, not
    timings): forward BLOCK_M x warps, backward BLOCK_M x warps x programs per SM."""
    import triton

    from . import rmsnorm as rn

    for M, H in _shapes(RMSNORM_SHAPES, dry):
        bh = triton.next_power_of_2(H)
        x = torch.randn(M, H, device=dev, dtype=torch.bfloat16)
        w = (1 + 0.1 * torch.randn(H, device=dev)).to(torch.bfloat16)
        dy = torch.randn(M, H, device=dev, dtype=torch.bfloat16)
        _, _, rstd = rn.rms_norm_forward(x, w, None, 1e-5, 0.5)
        fwd_grid = (
            [(1, 2), (2, 4)] if dry else [(bm, nw) for bm in (1, 2, 4, 8) for nw in (2, 4, 8, 16) if bm * bh <= 16384]
        )
        bwd_grid = (
            [(1, 4, 2)]
            if dry
            else [(bm, nw, ps) for bm in (1, 2, 4) for nw in (4, 8, 16) for ps in (1, 2, 4, 8) if bm * bh <= 8192]
        )
        default_f, default_b = rn.fwd_config(H), rn.bwd_config(H)
        for bm, nw in fwd_grid:
            cfg = dict(BLOCK_M=bm, num_warps=nw)
            tag = " (default)" if cfg == default_f else ""
            try:
                ms = timer(lambda: rn.rms_norm_forward(x, w, None, 1e-5, 0.5, config=cfg))
                _record(
                    results,
                    "rmsnorm tune",
                    (M, H),
                    f"BLOCK_M={bm} warps={nw}{tag}",
                    "fwd",
                    ms,
                    2 * M * H * BF16,
                    copy_gbps,
                )
            except Exception as e:
                _record(
                    results,
                    "rmsnorm tune",
                    (M, H),
                    f"BLOCK_M={bm} warps={nw}",
                    "fwd",
                    note=f"failed: {type(e).__name__}: {str(e)[:200]}",
                )
        for bm, nw, ps in bwd_grid:
            cfg = dict(BLOCK_M=bm, num_warps=nw, per_sm=ps)
            tag = " (default)" if cfg == default_b else ""
            try:
                ms = timer(lambda: rn.rms_norm_backward(dy, x, w, rstd, None, 0.5, x.dtype, None, config=cfg))
                _record(
                    results,
                    "rmsnorm tune",
                    (M, H),
                    f"BLOCK_M={bm} warps={nw} per_sm={ps}{tag}",
                    "bwd",
                    ms,
                    3 * M * H * BF16,
                    copy_gbps,
                )
            except Exception as e:
                _record(
                    results,
                    "rmsnorm tune",
                    (M, H),
                    f"BLOCK_M={bm} warps={nw} per_sm={ps}",
                    "bwd",
                    note=f"failed: {type(e).__name__}: {str(e)[:200]}",
                )


def _targets(results, copy_gbps):
    """The issue's targets, evaluated on what was measured (None where a needed row is missing)."""

    def get(kernel, shape, provider_prefix, mode, key="ms"):
        for r in results:
            if (
                r["kernel"] == kernel
                and tuple(r["shape"]) == tuple(shape)
                and r["provider"].startswith(provider_prefix)
                and r["mode"] == mode
            ):
                return r.get(key)
        return None

    out = []
    for full, _ in RMSNORM_SHAPES:
        pct = get("rmsnorm", full, "ours", "fwd", "pct_of_copy")
        out.append(
            dict(
                target=f"rmsnorm {full} fwd >= 85% of copy bandwidth",
                value=pct,
                ok=None if pct is None else pct >= 85.0,
            )
        )
        ours, lig = get("rmsnorm", full, "ours", "fwd+bwd"), get("rmsnorm", full, "liger", "fwd+bwd")
        out.append(
            dict(
                target=f"rmsnorm {full} fwd+bwd at least 2x faster than Liger",
                value=[ours, lig],
                ok=None if ours is None or lig is None else ours * 2 <= lig,
            )
        )
    ours = get("rmsnorm", (16384, 2048), "ours", "fwd+bwd")
    out.append(
        dict(target="rmsnorm (16384, 2048) fwd+bwd <= 0.35 ms", value=ours, ok=None if ours is None else ours <= 0.35)
    )
    for full, _ in SWIGLU_SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            pct = get("swiglu", full, "ours", mode, "pct_of_copy")
            out.append(
                dict(
                    target=f"swiglu {full} {mode} >= 90% of copy bandwidth",
                    value=pct,
                    ok=None if pct is None else pct >= 90.0,
                )
            )
    for full, _ in CE_SHAPES:
        pk, pk_ref = (
            get("fused_linear_ce", full, "ours", "fwd+bwd", "peak_mib"),
            get("fused_linear_ce", full, "eager", "fwd+bwd", "peak_mib"),
        )
        out.append(
            dict(
                target=f"fused linear CE {full} peak memory <= 25% of unfused",
                value=[pk, pk_ref],
                ok=None if pk is None or pk_ref is None else pk <= 0.25 * pk_ref,
            )
        )
        ms, ms_ref = get("fused_linear_ce", full, "ours", "fwd+bwd"), get("fused_linear_ce", full, "eager", "fwd+bwd")
        out.append(
            dict(
                target=f"fused linear CE {full} fwd+bwd time <= unfused",
                value=[ms, ms_ref],
                ok=None if ms is None or ms_ref is None else ms <= ms_ref,
            )
        )
    return out


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _print_table(report):
    print(f"device: {report['device']}   copy bandwidth: {report['copy_gbps']:.0f} GB/s (read + write)")
    if report["notes"]:
        for n in report["notes"]:
            print(f"note: {n}")
    hdr = (
        f"{'kernel':<16} {'shape':<24} {'provider':<40} {'mode':<8} {'ms':>9} {'GB/s':>8} {'%copy':>6} {'peak MiB':>9}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in report["results"]:
        if r["mode"] == "check":
            errs = ", ".join(f"{k} {v:.1e}" for k, v in r["rel_err"].items())
            print(f"{r['kernel']:<16} {'x'.join(map(str, r['shape'])):<24} {'ours vs eager':<40} {'check':<8} {errs}")
            continue
        print(
            f"{r['kernel']:<16} {'x'.join(map(str, r['shape'])):<24} {r['provider'][:40]:<40} {r['mode']:<8} "
            f"{_fmt(r['ms'], '9.3f')} {_fmt(r['gbps'], '8.0f')} {_fmt(r['pct_of_copy'], '6.1f')} "
            f"{_fmt(r.get('peak_mib'), '9.0f')}" + (f"  {r['note']}" if r["note"] else "")
        )
    print()
    for t in report["targets"]:
        status = {True: "MET", False: "MISSED", None: "not measured"}[t["ok"]]
        print(f"[{status}] {t['target']}: {t['value']}")


def main(argv=None) -> int:
    args = _parse(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "bench_kernels: needs a CUDA GPU (none found). Use --dry-run to push tiny shapes through the "
            "same code on CPU under the Triton interpreter.",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    from . import triton_available

    dev = torch.device("cuda" if cuda else "cpu")
    if not triton_available(dev):
        print(
            "bench_kernels: Triton cannot run here (on CPU set TRITON_INTERPRET=1 before importing triton)",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    torch.manual_seed(0)
    timer = _Timer(cuda, args.warmup_ms, args.rep_ms, graph=args.graph and cuda)
    notes = []
    compile_on = not args.no_compile and not args.dry_run
    if args.dry_run:
        notes.append(
            "dry run: tiny shapes on CPU, interpreter timings are meaningless; torch.compile and Liger skipped"
        )
    liger, why = (None, "dry run") if args.dry_run else _liger()
    if why and not args.dry_run:
        notes.append(why)
    if not compile_on and not args.dry_run:
        notes.append("torch.compile skipped (--no-compile)")
    copy_gbps = _copy_bandwidth(dev, timer, args.dry_run)
    results = []
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    benches = dict(rmsnorm=bench_rmsnorm, swiglu=bench_swiglu, rope=bench_rope, ce=bench_ce)
    for name, fn in benches.items():
        if only and name not in only:
            continue
        fn(results, dev, timer, copy_gbps, args.dry_run, compile_on, liger)
    if args.tune:
        tune_rmsnorm(results, dev, timer, copy_gbps, args.dry_run)
    import triton

    report = dict(
        device=torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        dry_run=args.dry_run,
        torch=torch.__version__,
        triton=triton.__version__,
        liger=liger["version"] if liger else None,
        dtype="bfloat16",
        copy_gbps=copy_gbps,
        timing=(("triton.testing.do_bench_cudagraph" if args.graph else "triton.testing.do_bench") + " median")
        if cuda
        else "one wall-clock call (dry run)",
        notes=notes,
        results=results,
        targets=_targets(results, copy_gbps),
    )
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    _print_table(report)
    print(f"\nwrote {args.out}")
    return 0
