"""Compile the kernels for an H100 (sm_90a) on a machine without a GPU and read the compiler's report.

    TRITON_INTERPRET unset:  python -m grow_megatron.kernels.aot [--json]

For each kernel at the launch configuration our launchers pick for the benchmark shapes it
reports registers, local memory (spills; cuobjdump -res-usage) and how wide the global loads and stores are (SASS from
cuobjdump): the questions METHOD.md says to answer before spending device time. It also proves
the kernels compile for the GPU, which the interpreter-only CPU tests cannot (the interpreter
accepts some code the compiler rejects). Uses the ptxas/cuobjdump that ship inside Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def _configs():
    """(label, kernel, {arg: type or value}, constexprs, num_warps) at the benchmark shapes."""
    import triton

    from . import fused_linear_ce as ce
    from . import rmsnorm as rn
    from . import rope as rp

    sw = sys.modules[__package__ + ".swiglu"]  # the package exports a function named swiglu

    out = []
    for H in (960, 2048, 8192):
        bh = triton.next_power_of_2(H)
        fc, bc = rn.fwd_config(H), rn.bwd_config(H)
        for res in (False, True):
            sig = dict(
                X="*bf16",
                RES="*bf16",
                Y="*bf16",
                RES_OUT="*bf16",
                W="*bf16",
                RSTD="*fp32",
                stride_x=H,
                stride_res=H,
                stride_y=H,
                stride_res_out=H,
                M=16384,
                H=H,
                eps="fp32",
                scale="fp32",
            )
            out.append(
                (
                    f"rmsnorm fwd H={H} residual={res}",
                    rn._rms_norm_fwd_kernel,
                    sig,
                    dict(HAS_RESIDUAL=res, BLOCK_M=fc["BLOCK_M"], BLOCK_H=bh, EMULATE_RTNE=False),
                    fc["num_warps"],
                )
            )
        sig = dict(
            DY="*bf16",
            X="*bf16",
            W="*bf16",
            RSTD="*fp32",
            DRES_OUT="*bf16",
            DX="*bf16",
            DRES_IN="*bf16",
            DW_PARTIAL="*fp32",
            stride_dy=H,
            stride_x=H,
            stride_dres=H,
            stride_dx=H,
            stride_dres_in=H,
            M=16384,
            H=H,
            scale="fp32",
        )
        out.append(
            (
                f"rmsnorm bwd H={H}",
                rn._rms_norm_bwd_kernel,
                sig,
                dict(HAS_DRES=True, SEPARATE_DRES_IN=False, BLOCK_M=bc["BLOCK_M"], BLOCK_H=bh, EMULATE_RTNE=False),
                bc["num_warps"],
            )
        )
    bn, bp = rn.sum_partials_blocks(660, 2048)  # 132 SMs x 5 programs
    out.append(
        (
            "rmsnorm dweight reduce",
            rn._sum_partials_kernel,
            dict(PARTIAL="*fp32", OUT="*bf16", P=660, H=2048),
            dict(BLOCK_P=bp, BLOCK_N=bn, EMULATE_RTNE=False),
            4,
        )
    )
    for F in (2560, 8192):
        B = sw._block(F)
        warps = max(1, min(8, B // 256))
        for fused in (False, True):
            st = 2 * F if fused else F
            out.append(
                (
                    f"swiglu fwd F={F}{' fused' if fused else ''}",
                    sw._swiglu_fwd_kernel,
                    dict(G="*bf16", U="*bf16", O="*bf16", stride_g=st, stride_u=st, stride_o=F, F=F),
                    dict(BLOCK=B, EMULATE_RTNE=False),
                    warps,
                )
            )
            out.append(
                (
                    f"swiglu bwd F={F}{' fused' if fused else ''}",
                    sw._swiglu_bwd_kernel,
                    dict(
                        DO="*bf16",
                        G="*bf16",
                        U="*bf16",
                        DG="*bf16",
                        DU="*bf16",
                        stride_do=F,
                        stride_g=st,
                        stride_u=st,
                        stride_dg=st,
                        stride_du=st,
                        F=F,
                    ),
                    dict(BLOCK=B, EMULATE_RTNE=False),
                    warps,
                )
            )
    for _s, b, hq, hk, d in ((2048, 8, 15, 5, 64), (2048, 8, 32, 32, 64)):
        # q, k as views of a fused qkv [s, b, hq + 2hk, d]; outputs contiguous
        hs = hq + 2 * hk
        sig = dict(
            Q="*bf16",
            K="*bf16",
            QO="*bf16",
            KO="*bf16",
            COS="*bf16",
            SIN="*bf16",
            sq_s=b * hs * d,
            sq_b=hs * d,
            sq_h=d,
            sk_s=b * hs * d,
            sk_b=hs * d,
            sk_h=d,
            sqo_s=b * hq * d,
            sqo_b=hq * d,
            sqo_h=d,
            sko_s=b * hk * d,
            sko_b=hk * d,
            sko_h=d,
            stride_cos=d,
            stride_sin=d,
            B=b,
            HQ=hq,
            HK=hk,
            HALF=d // 2,
        )
        out.append(
            (
                f"rope {hq}/{hk}x{d}",
                rp._rope_kernel,
                sig,
                dict(
                    BACKWARD=False,
                    BLOCK_HQ=triton.next_power_of_2(hq),
                    BLOCK_HK=triton.next_power_of_2(hk),
                    BLOCK_D2=triton.next_power_of_2(d // 2),
                    EMULATE_RTNE=False,
                ),
                rp._warps(hq, hk, d // 2),
            )
        )
    V = 49152
    out.append(
        (
            "ce fwd row pass V=49152",
            ce._ce_fwd_kernel,
            dict(LOGITS="*bf16", TARGET="*i64", LOSS="*fp32", LSE="*fp32", stride_l=V, V=V, ignore_index=-100),
            dict(BLOCK_V=4096),
            8,
        )
    )
    out.append(
        (
            "ce bwd block Vc=8192",
            ce._ce_bwd_kernel,
            dict(
                LOGITS="*bf16",
                TARGET="*i64",
                LSE="*fp32",
                GRAD_LOSS="*fp32",
                stride_l=8192,
                stride_g=1,
                Vc=8192,
                v_start=8192,
                ignore_index=-100,
            ),
            dict(BLOCK_V=2048, EMULATE_RTNE=False),
            8,
        )
    )
    return out


def _signature(kernel, args: dict, constexprs: dict):
    """Triton signature and attrs as a real launch would specialize them (16-aligned pointers,
    ints divisible by 16 marked so) for the given example argument values."""
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        v = args[name]
        if isinstance(v, str):
            sig[name] = v
            if v.startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_report(arch: int = 90, only: str = "") -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows = []
    for label, kernel, args, constexprs, warps in _configs():
        if only and not any(o.strip() and o.strip() in label for o in only.split(",")):
            continue
        row = dict(kernel=label, num_warps=warps)
        try:
            sig, attrs = _signature(kernel, args, constexprs)
            k = triton.compile(
                ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=warps),
            )
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            rows.append(row)
            continue
        row["shared_bytes"] = getattr(k.metadata, "shared", None)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "k.cubin")
            with open(cubin, "wb") as f:
                f.write(k.asm["cubin"])
            usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True).stdout
            sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
        for key, name in (("REG", "registers"), ("LOCAL", "local_bytes"), ("STACK", "stack_bytes")):
            m = re.search(rf"\b{key}:(\d+)", usage)
            row[name] = int(m.group(1)) if m else None
        for op in ("LDG", "STG"):
            widths = {}
            for w in re.findall(
                rf"\b{op}\.E(?:\.(?:EL|LU|EF|NA|STRONG\.\w+|CONSTANT|\w*CACHE\w*))*(?:\.(U8|S8|U16|S16|64|128))?", sass
            ):
                key = {"": "32", "U8": "8", "S8": "8", "U16": "16", "S16": "16"}.get(w, w)
                widths[key] = widths.get(key, 0) + 1
            row[op.lower() + "_bits"] = widths
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--only", default="", help="comma list: compile only kernels whose label contains one of these")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot: unset TRITON_INTERPRET (the interpreter replaces the compiler)", file=sys.stderr)
        return 2
    rows = compile_report(args.arch, args.only)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'kernel':<34} {'warps':>5} {'regs':>5} {'local B':>7}  global loads / stores by width (bits: count)")
        for r in rows:
            if "error" in r:
                print(f"{r['kernel']:<34} ERROR {r['error']}")
                continue
            print(
                f"{r['kernel']:<34} {r['num_warps']:>5} {r['registers'] or '-':>5} {r['local_bytes'] or 0:>7}  "
                f"LDG {r['ldg_bits']}  STG {r['stg_bits']}"
            )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
