#!/usr/bin/env python
"""Is the engine correct on CUDA? The first step of tools/gpu_session.sh (issue 18, priority 1).

    python tools/gpu_correct.py --out correct.json              # on a CUDA GPU
    python tools/gpu_correct.py --smoke --out /tmp/correct.json # CPU, tiny sizes: checks this script

Parts, in this order (each one's failure is recorded in the JSON and the next part still runs):
  pytest   tests/test_kernels_*.py, test_model_kernels.py, test_sdpa_gqa.py on this device (the
           kernel tests take CUDA when it is there), started first in a background process with
           its own time limit; junit XML parsed into counts and failures
  kernels  each Triton kernel against its PyTorch reference at the benchmark shapes
           (kernels/bench.py's tables), bf16, outputs and gradients, the kernel tests' criterion
           (kernels/testing.py): error against an fp64 reference <= 2x PyTorch's own bf16 error;
           outputs allocated NaN-filled, so an unwritten element fails
  sdpa     SDPA's native GQA path (enable_gqa) against the repeat_interleave path at the 360M
           attention shape, bf16, forward and backward, same criterion; which fused kernels
           accept it; both paths timed (forward+backward)
  engine   the tiny config and a SmolLM-360M-shape config (8 layers, growth 4 -> 8, micro-batch
           8 x 2048) train a few steps with model.kernels on and off (losses within bf16
           tolerance), grow once, save, and resume (the resumed losses equal the uninterrupted
           run's), under torch's deterministic algorithms

The JSON (--out) is rewritten after every check, so a run stopped at a time limit keeps what it
checked; a table is printed at the end. Exit code: 0 all checks passed, 1 a check failed, 2 no
GPU (without --smoke). tools/gpu_results.py turns the JSON into docs/benchmarks.md's table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable

import torch

from grow_megatron.engine.device import Device

# Before CUDA is initialised: cuBLAS is deterministic only with a fixed workspace (the engine
# part runs under torch.use_deterministic_algorithms, so that a resumed run can equal the
# uninterrupted one bit for bit).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# Without a GPU the kernels run under Triton's interpreter (chosen before triton is imported).
Device.local().interpret_triton_on_cpu()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_NO_GPU = 2
# Losses of two bf16 runs that differ only in summation order (kernels on vs off), a few steps
# through a growth: the tolerance of tests/test_training_resume.py's bf16-vs-fp32 comparison
# (8 mantissa bits, ~0.4% per op, over a dozen steps).
LOSS_RTOL_BF16 = 2e-2
PYTEST_FILES = [
    "tests/test_kernels_rmsnorm.py",
    "tests/test_kernels_swiglu.py",
    "tests/test_kernels_rope.py",
    "tests/test_kernels_fused_linear_ce.py",
    "tests/test_kernels_api.py",
    "tests/test_model_kernels.py",
    "tests/test_sdpa_gqa.py",
]
PARTS = ("pytest", "kernels", "sdpa", "engine")


# ----------------------------------------------------------------------------- verdicts (pure)


def losses_agree(a: dict, b: dict, rtol: float) -> dict:
    """Two runs' losses by step: the largest relative difference and whether every step is within rtol."""
    steps = sorted(set(a) & set(b), key=int)
    diffs = [abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in steps]
    finite = all(math.isfinite(a[s]) and math.isfinite(b[s]) for s in steps)
    worst = max(diffs) if diffs else None
    return {
        "steps": len(steps),
        "max_rel_diff": worst,
        "rtol": rtol,
        "ok": bool(steps) and finite and set(a) == set(b) and worst <= rtol,
    }


def resume_verdict(full: dict, first: dict, second: dict, stop_at: int) -> dict:
    """The split run (first: steps before stop_at, second: the resumed rest) against the
    uninterrupted one. exact: bit-equal everywhere (ok). Otherwise, if the steps before the stop
    already differ, two identical runs differ on this device (nondeterminism, not the resume:
    ok None, undecided); if only the resumed steps differ, the resume is wrong (ok False)."""
    got = {**first, **second}
    pre = [s for s in full if int(s) < stop_at]
    post = [s for s in full if int(s) >= stop_at]
    pre_equal = all(first.get(s) == full[s] for s in pre)
    post_equal = all(second.get(s) == full[s] for s in post)
    diffs = [abs(got[s] - full[s]) / max(abs(full[s]), 1e-12) for s in full if s in got]
    out = {
        "stop_at": stop_at,
        "pre_stop_equal": pre_equal,
        "resumed_equal": post_equal,
        "max_rel_diff": max(diffs) if diffs else None,
        "resumed_from": min((int(s) for s in second), default=None),
    }
    if set(got) != set(full):
        return {**out, "ok": False, "verdict": f"steps differ: {sorted(map(int, got))} vs {sorted(map(int, full))}"}
    if pre_equal and post_equal:
        return {**out, "ok": True, "verdict": "exact"}
    if not pre_equal:
        return {**out, "ok": None, "verdict": "the device is not deterministic: steps before the stop differ already"}
    return {**out, "ok": False, "verdict": "the resumed steps differ (the steps before the stop are equal)"}


def junit_summary(path: str) -> dict:
    """Counts and failures from a pytest junit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failures = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                failures.append(
                    {
                        "test": f"{case.get('classname')}::{case.get('name')}",
                        "kind": tag,
                        "message": (el.get("message") or "")[:300],
                    }
                )
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failures}


# ----------------------------------------------------------------------------- report


class Report:
    """The JSON, rewritten after every check."""

    def __init__(self, path: str, smoke: bool, device: torch.device):
        self.path = path
        self.data: dict = {
            "environment": _environment(device, smoke),
            "smoke": smoke,
            "pytest": None,
            "kernels": [],
            "sdpa": [],
            "engine": [],
            "errors": {},
        }
        self.write()

    def write(self) -> None:
        self.data["summary"] = summary(self.data)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def summary(data: dict) -> dict:
    """Every check's outcome: failed (ok False), undecided (ok None), passed."""
    checks = [(f"kernel {k['kernel']} {k['case']} {k['shape']}", k.get("ok")) for k in data["kernels"]]
    checks += [(f"sdpa native GQA {s['shape']}", s.get("ok")) for s in data["sdpa"]]
    for e in data["engine"]:
        if e.get("error"):
            checks.append((f"engine {e['name']}: {e['error'][:120]}", False))
        else:
            checks += [
                (f"engine {e['name']}: kernels on vs off", (e.get("on_vs_off") or {}).get("ok")),
                (f"engine {e['name']}: resume", (e.get("resume") or {}).get("ok")),
            ]
    p = data.get("pytest")
    if p:
        checks.append(("pytest", p.get("ok")))
    checks += [(f"part {k}: {v[:120]}", False) for k, v in data.get("errors", {}).items()]
    failed = [n for n, ok in checks if ok is False]
    undecided = [n for n, ok in checks if ok is None]
    return {
        "checks": len(checks),
        "passed": sum(ok is True for _, ok in checks),
        "failed": failed,
        "undecided": undecided,
        "ok": bool(checks) and not failed and not undecided,
    }


def _environment(device: torch.device, smoke: bool) -> dict:
    import importlib.metadata as md

    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
    }
    for name in ("triton", "megatron-core", "transformers"):
        try:
            env[name.replace("-", "_")] = md.version(name)
        except md.PackageNotFoundError:
            env[name.replace("-", "_")] = None
    if device.type == "cuda":
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["cudnn"] = torch.backends.cudnn.version()
    return env


# ----------------------------------------------------------------------------- pytest (background)


def start_pytest(junit: str, select: str, limit_s: int) -> tuple[subprocess.Popen, float]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        *PYTEST_FILES,
    ] + (["-k", select] if select else [])
    env = {**os.environ, "CI": "true"}
    log = open(junit + ".log", "w")
    print(f"[pytest] {' '.join(cmd)} (background, limit {limit_s}s)", flush=True)
    # Own process group: a time limit ends pytest and every process it started.
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    ), time.time()


def finish_pytest(proc: subprocess.Popen, t0: float, junit: str, limit_s: float) -> dict:
    """Wait for the background pytest until t0 + limit_s, then end it (and what it started)."""
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, limit_s - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = {"rc": proc.returncode, "seconds": round(time.time() - t0, 1), "timed_out": timed_out, "files": PYTEST_FILES}
    with open(junit + ".log", errors="replace") as f:
        out["tail"] = f.read()[-1500:]
    if os.path.exists(junit):
        out.update(junit_summary(junit))
        out["ok"] = not timed_out and proc.returncode == 0 and not out["failed"]
    else:
        out["ok"] = False
    return out


# ----------------------------------------------------------------------------- kernels


def _rand(shape, dtype, gen, device, scale=1.0):
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)


def kernel_cases(device: torch.device, smoke: bool) -> list[tuple[str, str, tuple, Callable]]:
    """(kernel, case, shape, make) at kernels/bench.py's benchmark shapes (its dry-run shapes in
    smoke mode); make(gen) -> (fn, ref_fn, args, diff, upstream, names)."""
    from grow_megatron.kernels import (
        apply_rope,
        apply_rope_ref,
        fused_linear_cross_entropy,
        fused_linear_cross_entropy_ref,
        rms_norm,
        rms_norm_ref,
        rope_cos_sin,
        swiglu,
        swiglu_fused,
        swiglu_fused_ref,
        swiglu_ref,
    )
    from grow_megatron.kernels.bench import CE_SHAPES, RMSNORM_SHAPES, ROPE_SHAPES, SWIGLU_SHAPES, _shapes

    bf, dev = torch.bfloat16, device
    up = lambda shape, g: _rand(shape, torch.float64, g, dev)  # noqa: E731 (upstream grads, fp64)
    cases = []
    for M, H in _shapes(RMSNORM_SHAPES, smoke):

        def norm(g, M=M, H=H):
            x, w = _rand((M, H), bf, g, dev), (1 + _rand((H,), torch.float32, g, dev, 0.3)).to(bf)
            return rms_norm, rms_norm_ref, [x, w, 1e-5, 1 / math.sqrt(12)], [0, 1], [up((M, H), g)], ["y", "dx", "dw"]

        def norm_res(g, M=M, H=H):
            x, w, r = (
                _rand((M, H), bf, g, dev),
                (1 + _rand((H,), torch.float32, g, dev, 0.3)).to(bf),
                _rand((M, H), bf, g, dev),
            )
            return (
                rms_norm,
                rms_norm_ref,
                [x, w, 1e-5, 1 / math.sqrt(12), r],
                [0, 1, 4],
                [up((M, H), g), up((M, H), g)],
                ["y", "new_residual", "dx", "dw", "dresidual"],
            )

        cases += [("rmsnorm", "LN-Scaling", (M, H), norm), ("rmsnorm", "residual", (M, H), norm_res)]
    for M, F in _shapes(SWIGLU_SHAPES, smoke):

        def sw(g, M=M, F=F):
            return (
                swiglu,
                swiglu_ref,
                [_rand((M, F), bf, g, dev, 3.0), _rand((M, F), bf, g, dev)],
                [0, 1],
                [up((M, F), g)],
                ["out", "dgate", "dup"],
            )

        def sw_fused(g, M=M, F=F):
            return (
                swiglu_fused,
                swiglu_fused_ref,
                [_rand((M, 2 * F), bf, g, dev, 3.0)],
                [0],
                [up((M, F), g)],
                ["out", "dx"],
            )

        cases += [("swiglu", "separate", (M, F), sw), ("swiglu", "fused [M,2F]", (M, F), sw_fused)]
    for s, b, hq, hk, d in _shapes(ROPE_SHAPES, smoke):

        def rope(g, s=s, b=b, hq=hq, hk=hk, d=d):
            cos, sin = rope_cos_sin(s, d, device=dev)
            return (
                apply_rope,
                apply_rope_ref,
                [_rand((s, b, hq, d), bf, g, dev), _rand((s, b, hk, d), bf, g, dev), cos, sin],
                [0, 1],
                [up((s, b, hq, d), g), up((s, b, hk, d), g)],
                ["q", "k", "dq", "dk"],
            )

        cases.append(("rope", "q,k", (s, b, hq, hk, d), rope))
    for N, V, D in _shapes(CE_SHAPES, smoke):

        def ce(g, N=N, V=V, D=D):
            h = _rand((N, D), bf, g, dev, 4 / math.sqrt(D))  # logits of std ~4, as in kernels/bench.py
            w = _rand((V, D), bf, g, dev)
            t = torch.randint(0, V, (N,), generator=g, device=dev)
            t[::17] = -100  # ignored tokens
            return (
                fused_linear_cross_entropy,
                fused_linear_cross_entropy_ref,
                [h, w, t],
                [0, 1],
                [torch.rand((N,), generator=g, device=dev, dtype=torch.float64)],
                ["loss", "dh", "dw"],
            )

        cases.append(("fused_linear_ce", "loss per token", (N, V, D), ce))
    return cases


def check_kernel(make: Callable, seed: int, device: torch.device) -> dict:
    """One kernel case: errors of ours and of PyTorch's bf16 reference against fp64, the verdict."""
    from grow_megatron.kernels import _utils
    from grow_megatron.kernels.testing import check_against_reference, outputs_and_grads, poisoned_empty, rel_err

    g = torch.Generator(device=device).manual_seed(seed)
    fn, ref_fn, args, diff, upstream, names = make(g)
    real_empty = _utils.empty
    _utils.empty = poisoned_empty  # NaN-filled outputs: an element the kernel forgets to write fails
    try:
        ours = outputs_and_grads(fn, args, diff, upstream)
    finally:
        _utils.empty = real_empty
    lowp = outputs_and_grads(ref_fn, args, diff, upstream)
    ref64 = outputs_and_grads(ref_fn, args, diff, upstream, cast=torch.float64)
    failures = check_against_reference(ours, lowp, ref64, torch.bfloat16, names)
    errs = {n: {"ours": rel_err(a, c), "torch": rel_err(b, c)} for n, a, b, c in zip(names, ours, lowp, ref64)}
    return {"errors": errs, "failures": failures, "ok": not failures}


# ----------------------------------------------------------------------------- SDPA native GQA


def check_sdpa(device: torch.device, smoke: bool) -> dict:
    """Native GQA (enable_gqa) vs the repeat path at the 360M attention shape: both against an
    fp64 reference (the repeat path in fp64), bf16, forward and backward."""
    from grow_megatron.kernels.testing import LOWP_ERR_RATIO, outputs_and_grads, rel_err
    from grow_megatron.model.modules import causal_attention, native_gqa_is_fused

    b, hq, hkv, s, d = (2, 15, 5, 33, 8) if smoke else (8, 15, 5, 2048, 64)  # SmolLM-360M: 15 / 5 heads of 64
    g = torch.Generator(device=device).manual_seed(18)
    q, k, v = (_rand((b, h, s, d), torch.bfloat16, g, device) for h in (hq, hkv, hkv))
    upstream = [_rand((b, hq, s, d), torch.float64, g, device)]
    scale = 1 / math.sqrt(d)
    out = {"shape": f"b{b} hq{hq} hkv{hkv} s{s} d{d}"}
    if device.type == "cuda":
        cuda = torch.backends.cuda
        params = cuda.SDPAParams(q, k, v, None, 0.0, True, True)
        out["fused_accepts_native"] = {
            n: bool(f(params, False))
            for n, f in (
                ("flash", cuda.can_use_flash_attention),
                ("efficient", cuda.can_use_efficient_attention),
                ("cudnn", cuda.can_use_cudnn_attention),
            )
        }
    out["engine_takes_native"] = native_gqa_is_fused(q, k, v, 0.0)
    names = ["out", "dq", "dk", "dv"]
    attn = lambda native: lambda q, k, v: causal_attention(q, k, v, native_gqa=native, scale=scale)  # noqa: E731
    native = outputs_and_grads(attn(True), [q, k, v], [0, 1, 2], upstream)
    repeat = outputs_and_grads(attn(False), [q, k, v], [0, 1, 2], upstream)
    ref64 = outputs_and_grads(attn(False), [q, k, v], [0, 1, 2], upstream, cast=torch.float64)
    errs = {n: {"native": rel_err(a, c), "repeat": rel_err(r, c)} for n, a, r, c in zip(names, native, repeat, ref64)}
    failures = [
        f"{n}: native err {e['native']:.3g} > {LOWP_ERR_RATIO} x repeat's {e['repeat']:.3g}"
        for n, e in errs.items()
        if not e["native"] <= LOWP_ERR_RATIO * e["repeat"] + 1e-7
    ]
    out.update(errors=errs, failures=failures, ok=not failures)
    if device.type == "cuda":
        import triton.testing

        ms = {}
        for native_gqa in (True, False):
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            dy = upstream[0].to(torch.bfloat16)
            ms["native" if native_gqa else "repeat"] = triton.testing.do_bench(
                lambda: causal_attention(qq, kk, vv, native_gqa=native_gqa, scale=scale).backward(dy),
                grad_to_none=[qq, kk, vv],
                warmup=10,
                rep=50,
                return_mode="median",
            )
        out["fwd_bwd_ms"] = ms
    return out


# ----------------------------------------------------------------------------- engine


def engine_configs(smoke: bool) -> list[dict]:
    """The two configs, as (name, base YAML, overrides). Growth 4 -> 8 layers (2 -> 4 in smoke)
    in a few steps, bf16 (the GPU default), no eval, no periodic checkpoint."""
    common = {
        "train.precision": "bf16",
        "train.eval_interval": 0,
        "checkpoint.interval": 0,
        "checkpoint.save_at_growth": False,
        "logging.progress": False,
        "logging.tensorboard": False,
        "optim.warmup_steps": 1,
        "optim.decay_steps": 1,
    }
    if smoke:
        small = {
            "model.num_layers": 4,
            "growth.block_size": 2,
            "train.steps": 4,
            "growth.grow_steps": 3,
            "model.seq_length": 32,
            "train.global_batch_size": 2,
            "train.micro_batch_size": 2,
        }
        return [
            {
                "name": "tiny",
                "config": "examples/tiny_lidas.yaml",
                "shape": "width 64, 2 -> 4 layers, 2x32",
                "set": {**common, **small, "model.hidden_size": 64, "model.ffn_hidden_size": 160},
            },
            {
                "name": "360m-shape",
                "config": "examples/smollm360m_lidas_short.yaml",
                "shape": "15/5 heads of 8, 2 -> 4 layers, 2x32",
                "set": {
                    **common,
                    **small,
                    "model.hidden_size": 120,
                    "model.ffn_hidden_size": 160,
                    "model.vocab_size": 4096,
                },
            },
        ]
    return [
        {
            "name": "tiny",
            "config": "examples/tiny_lidas.yaml",
            "shape": "tiny preset, 4 -> 8 layers, 16x128",
            "set": {**common, "model.num_layers": 8, "train.steps": 6, "growth.grow_steps": 6},
        },
        {
            "name": "360m-shape",
            "config": "examples/smollm360m_lidas_short.yaml",
            "shape": "SmolLM-360M layers (960, 15/5 heads, ffn 2560, vocab 49152), 4 -> 8 layers, 8x2048",
            "set": {
                **common,
                "model.num_layers": 8,
                "train.steps": 6,
                "growth.grow_steps": 6,
                "train.global_batch_size": 8,
                "train.micro_batch_size": 8,
            },
        },
    ]


def check_engine(spec: dict, work: str, out: dict) -> dict:
    """Fills `out` as the runs finish, so that a stop at the time limit keeps the runs done."""
    from grow_megatron.config.run import load_run_config
    from grow_megatron.growth.schedule import plan_from_config
    from grow_megatron.training.loop import train

    out.update(overrides=spec["set"])

    def cfg(run: str, kernels: str):
        sets = {**spec["set"], "model.kernels": kernels, "run_dir": os.path.join(work, spec["name"], run)}
        return load_run_config(os.path.join(ROOT, spec["config"]), [f"{k}={v}" for k, v in sets.items()])

    def run(run_name: str, kernels: str, stop_at: int | None = None) -> dict:
        seen = {}

        def on_step(engine, step, rec):
            if not seen:
                layer = engine.local_layers()[0]
                seen["kernels_in_use"] = bool(
                    engine.chunks[0].fused_loss
                    and layer.input_layernorm.use_kernel
                    and layer.self_attention.core_attention.use_kernel
                )

        t = time.time()
        c = cfg(run_name, kernels)
        res = train(c, stop_at=stop_at, on_step=on_step)
        if res.end_step < (stop_at or c.train.steps):
            # train() turns SIGINT (the session's time limit) into a clean early stop; here it
            # must end the checks, not start the next run.
            raise KeyboardInterrupt
        rec = {
            "losses": {str(k): v for k, v in sorted(res.losses.items())},
            "seconds": round(time.time() - t, 1),
            "growths": [{k: getattr(g, k) for k in ("step", "old_depth", "new_depth", "seconds")} for g in res.growths],
            "start_step": res.start_step,
            **seen,
        }
        if torch.cuda.is_available():
            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        print(
            f"[engine {spec['name']}] {run_name}: {len(rec['losses'])} steps in {rec['seconds']}s, "
            f"losses {[round(v, 4) for v in rec['losses'].values()]}",
            flush=True,
        )
        return rec

    boundaries = plan_from_config(cfg("plan", "off")).boundaries
    out["growth_steps"] = list(boundaries)
    stop_at = boundaries[0] + 1  # just after the growth: the checkpoint holds the grown model and its new optimizer
    out["kernels_on"] = run("on", "on")
    out["kernels_off"] = run("off", "off")
    out["on_vs_off"] = losses_agree(out["kernels_on"]["losses"], out["kernels_off"]["losses"], LOSS_RTOL_BF16)
    if out["kernels_on"].get("kernels_in_use") is False:
        out["on_vs_off"].update(ok=False, note="model.kernels=on but the engine did not use the kernels")
    first = run("split", "on", stop_at=stop_at)
    second = run("split", "on")
    out["resume"] = {
        **resume_verdict(out["kernels_on"]["losses"], first["losses"], second["losses"], stop_at),
        "first": first,
        "second": second,
    }
    return out


# ----------------------------------------------------------------------------- main


def _or_dash(x) -> str:
    return "-" if x is None else str(x)


def _row(check: str, ok, detail: str) -> str:
    mark = {True: "ok", False: "FAILED", None: "undecided"}[ok]
    return f"{check:<58} {mark:<9} {detail}"


def print_table(data: dict) -> None:
    print(
        "\n--- correct on " + data["environment"]["device"] + (" (SMOKE: tiny sizes on CPU)" if data["smoke"] else "")
    )
    for k in data["kernels"]:
        worst = max(
            ((e["ours"] / e["torch"] if e["torch"] else float("inf")) for e in k.get("errors", {}).values()),
            default=None,
        )
        detail = k.get("error") or (f"worst ours/torch error {worst:.2f}" if worst is not None else "")
        print(_row(f"kernel {k['kernel']} {k['case']} {'x'.join(map(str, k['shape']))}", k.get("ok"), detail))
    for s in data["sdpa"]:
        detail = s.get("error") or (
            f"engine takes native: {s.get('engine_takes_native')}, ms native/repeat {s.get('fwd_bwd_ms')}"
        )
        print(_row(f"sdpa native GQA {s['shape']}", s.get("ok"), detail))
    for e in data["engine"]:
        if e.get("error"):
            print(_row(f"engine {e['name']}", False, e["error"][:100]))
            continue
        ov, r = e.get("on_vs_off") or {}, e.get("resume") or {}
        print(
            _row(
                f"engine {e['name']}: kernels on vs off",
                ov.get("ok"),
                f"max rel diff {ov.get('max_rel_diff')} (tol {ov.get('rtol')})",
            )
        )
        print(_row(f"engine {e['name']}: grow, save at {r.get('stop_at')}, resume", r.get("ok"), r.get("verdict", "")))
    p = data.get("pytest")
    if p:
        print(
            _row(
                "pytest (kernel tests on this device)",
                p.get("ok"),
                f"{_or_dash(p.get('passed'))} passed, {len(p.get('failed') or [])} failed, "
                f"{_or_dash(p.get('skipped'))} skipped" + (", TIMED OUT" if p.get("timed_out") else ""),
            )
        )
    for part, err in data["errors"].items():
        print(_row(f"part {part}", False, err[:100]))
    s = data["summary"]
    print(
        f"--- {s['passed']}/{s['checks']} checks passed; failed: {s['failed'] or 'none'}; "
        f"undecided: {s['undecided'] or 'none'}"
    )


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python tools/gpu_correct.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--work", default=None, help="folder for run dirs and the junit file (default: beside --out)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks this script, proves nothing")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list among {','.join(PARTS)}")
    p.add_argument("--pytest-k", default="", help="pytest -k selection (default: every test of the files)")
    p.add_argument("--pytest-limit", type=int, default=150, help="seconds for the background pytest run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = [s for s in parts if s not in PARTS]
    if bad:
        print(f"gpu_correct: --parts: unknown {', '.join(bad)} (choose among {', '.join(PARTS)})", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_correct: needs a CUDA GPU (none found); --smoke runs tiny sizes on CPU", file=sys.stderr)
        return EXIT_NO_GPU
    device = torch.device("cuda" if cuda else "cpu")
    work = args.work or os.path.join(os.path.dirname(os.path.abspath(args.out)), "correct")
    os.makedirs(work, exist_ok=True)
    rep = Report(args.out, args.smoke, device)
    junit = os.path.join(work, "pytest.xml")
    bg = start_pytest(junit, args.pytest_k, args.pytest_limit) if "pytest" in parts else None
    pytest_limit = args.pytest_limit
    try:
        if "kernels" in parts:
            try:
                for i, (kernel, case, shape, make) in enumerate(kernel_cases(device, args.smoke)):
                    t = time.time()
                    try:
                        row = check_kernel(make, 1000 + i, device)
                    except Exception as e:  # a crash is this case's finding, not the end of the checks
                        row = {
                            "ok": False,
                            "error": f"{type(e).__name__}: {str(e)[:300]}",
                            "traceback": traceback.format_exc()[-2000:],
                        }
                    rep.data["kernels"].append(
                        {
                            "kernel": kernel,
                            "case": case,
                            "shape": list(shape),
                            "seconds": round(time.time() - t, 2),
                            **row,
                        }
                    )
                    print(
                        f"[kernels] {kernel} {case} {shape}: {'ok' if row['ok'] else row.get('failures') or row['error']}",
                        flush=True,
                    )
                    rep.write()
            except Exception as e:
                rep.data["errors"]["kernels"] = f"{type(e).__name__}: {e}"
                rep.write()
        if "sdpa" in parts:
            try:
                rep.data["sdpa"].append(check_sdpa(device, args.smoke))
            except Exception as e:
                rep.data["sdpa"].append(
                    {
                        "shape": "360M attention",
                        "ok": False,
                        "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()[-2000:],
                    }
                )
            rep.write()
        if "engine" in parts:
            # Deterministic algorithms where torch has them (flash attention's backward, index_add,
            # ...); warn_only: an op without one warns instead of stopping the check.
            torch.use_deterministic_algorithms(True, warn_only=True)
            rep.data["environment"]["deterministic_algorithms"] = True
            for spec in engine_configs(args.smoke):
                # Recorded (and printed below), not hidden: the ops that warn are where a run
                # cannot be deterministic, the answer when a resume differs.
                row = {"name": spec["name"], "config": spec["config"], "shape": spec["shape"]}
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        check_engine(spec, work, row)
                    except KeyboardInterrupt:
                        row["error"] = "stopped at the time limit while this config ran (the runs done are kept)"
                        rep.data["engine"].append(row)
                        raise
                    except Exception as e:
                        row.update(
                            error=f"{type(e).__name__}: {str(e)[:300]}", traceback=traceback.format_exc()[-3000:]
                        )
                        print(f"[engine {spec['name']}] FAILED: {row['error']}", flush=True)
                row["nondeterminism_warnings"] = sorted(
                    {str(w.message)[:300] for w in caught if "determinis" in str(w.message)}
                )
                for w in row["nondeterminism_warnings"]:
                    print(f"[engine {spec['name']}] nondeterministic op: {w}", flush=True)
                print(
                    f"[engine {spec['name']}] {len(caught)} warnings in all "
                    f"({len(row['nondeterminism_warnings'])} about determinism, kept in the JSON)",
                    flush=True,
                )
                rep.data["engine"].append(row)
                rep.write()
    except KeyboardInterrupt:
        # The session's time limit (SIGINT): keep what was checked, end the background pytest now.
        rep.data["errors"]["interrupted"] = "stopped at its time limit (SIGINT) before every check ran"
        pytest_limit = 0
        print("[gpu_correct] interrupted: writing what was checked", flush=True)
    finally:
        if bg is not None:
            rep.data["pytest"] = finish_pytest(*bg, junit, pytest_limit)
            rep.write()
    print_table(rep.data)
    print(f"wrote {args.out}")
    return 0 if rep.data["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
