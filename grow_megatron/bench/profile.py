"""Where a training step's time goes: torch.profiler over a few steps, kernels grouped by kind.

The grouping is a pure function over (name, seconds) rows (`categorize`, `breakdown`), so it
is tested on hand-written rows; `profile_steps` is the only part that touches the profiler.
On a GPU the rows are the device's kernels, copies and fills (their device time); in a CPU
dry run they are the aten ops' self CPU time, which checks the plumbing and nothing else.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

GEMM, ATTENTION, TRITON, ELEMENTWISE = "GEMM", "attention", "Triton (ours)", "elementwise/reduction"
OPTIMIZER, COMMUNICATION, MEMORY = "optimizer", "communication", "memcpy/memset"
CATEGORIES = (GEMM, ATTENTION, TRITON, ELEMENTWISE, OPTIMIZER, COMMUNICATION, MEMORY)

# The @triton.jit functions of grow_megatron.kernels (a test keeps this list in step with the
# sources); the profiler names a Triton launch after its function.
OUR_TRITON_KERNELS = (
    "_rms_norm_fwd_kernel",
    "_rms_norm_bwd_kernel",
    "_sum_partials_kernel",
    "_rope_kernel",
    "_swiglu_fwd_kernel",
    "_swiglu_bwd_kernel",
    "_ce_fwd_kernel",
    "_ce_bwd_kernel",
)

# First match wins. Attention comes before GEMM because fused attention kernels are often
# cutlass/xmma templates too (fmha_cutlassF..., cudnn ..._sdpa_..._wgmma...); copies and
# collectives come first because their names can mention anything.
_RULES = (
    (MEMORY, re.compile(r"memcpy|memset")),
    (COMMUNICATION, re.compile(r"nccl|gloo|c10d|all_?reduce|reduce_?scatter|all_?gather|all_?to_?all|broadcast")),
    (ATTENTION, re.compile(r"flash|fmha|sdpa|scaled_dot_product|attention|attn")),
    (OPTIMIZER, re.compile(r"adam|multi_tensor|foreach|optimizer")),
    (GEMM, re.compile(r"gemm|cutlass|cublas|nvjet|xmma|matmul|\bmm\b|addmm|bmm|triton_tem_fused_\w*mm|_mm_")),
)


def categorize(name: str) -> str:
    """The category of one kernel (GPU) or aten op (CPU) by its name."""
    for k in OUR_TRITON_KERNELS:
        if k in name:
            return TRITON
    n = name.lower()
    for cat, rx in _RULES:
        if rx.search(n):
            return cat
    return ELEMENTWISE


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: the time at least one kernel ran
    (overlapping kernels on several streams count once)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def breakdown(
    rows: Iterable[tuple[str, float]],
    *,
    steps: int,
    wall_s: float,
    busy_s: float,
    step_s_unprofiled: float | None = None,
    top: int = 15,
    time_kind: str = "cuda",
) -> dict:
    """Group (name, seconds) rows into CATEGORIES (our Triton kernels also one by one) and the
    `top` names by time; `idle_fraction` is the share of the profiled wall time in which no
    row ran (host overhead, launch gaps, synchronisation)."""
    by_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for name, sec in rows:
        by_name[name][0] += sec
        by_name[name][1] += 1
    total = sum(v[0] for v in by_name.values())
    cats = dict.fromkeys(CATEGORIES, 0.0)
    triton: dict[str, float] = defaultdict(float)
    for name, (sec, _) in by_name.items():
        c = categorize(name)
        cats[c] += sec
        if c == TRITON:
            triton[next(k for k in OUR_TRITON_KERNELS if k in name)] += sec

    def frac(x: float) -> float | None:
        return x / total if total > 0 else None

    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    out = {
        "time_kind": time_kind,
        "steps": steps,
        "wall_s": wall_s,
        "device_time_s": total,
        "busy_s": busy_s,
        "wall_ms_per_step": 1e3 * wall_s / steps,
        "device_ms_per_step": 1e3 * total / steps,
        "busy_ms_per_step": 1e3 * busy_s / steps,
        "idle_fraction": max(0.0, 1.0 - busy_s / wall_s) if wall_s > 0 else None,
        "categories": [
            {"category": c, "seconds": s, "ms_per_step": 1e3 * s / steps, "fraction": frac(s)} for c, s in cats.items()
        ],
        "triton_kernels": [
            {"name": k, "seconds": s, "ms_per_step": 1e3 * s / steps, "fraction": frac(s)}
            for k, s in sorted(triton.items(), key=lambda kv: -kv[1])
        ],
        "top": [
            {
                "name": n,
                "category": categorize(n),
                "seconds": s,
                "calls": c,
                "ms_per_step": 1e3 * s / steps,
                "fraction": frac(s),
            }
            for n, (s, c) in ranked
        ],
    }
    # The profiler slows the host (each launch is traced), so the idle share is also given
    # against the unprofiled step time: kernel durations hardly change under the profiler.
    if step_s_unprofiled:
        out["step_ms_unprofiled"] = 1e3 * step_s_unprofiled
        out["idle_fraction_unprofiled"] = max(0.0, 1.0 - busy_s / steps / step_s_unprofiled)
    return out


def _rows_from_events(events, gpu: bool) -> tuple[list[tuple[str, float]], list[tuple[float, float]]]:
    """(name, seconds) rows and (start, end) seconds of the device's work (GPU) or the aten ops (CPU)."""
    rows, spans = [], []
    for e in events:
        if gpu:
            if e.device_type != DeviceType.CUDA:
                continue
            sec = (e.time_range.end - e.time_range.start) * 1e-6
        else:
            if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):
                continue
            sec = e.self_cpu_time_total * 1e-6
        rows.append((e.name, sec))
        spans.append((e.time_range.start * 1e-6, e.time_range.end * 1e-6))
    return rows, spans


def profile_steps(
    step: Callable[[], object], steps: int, sync: Callable[[], None], gpu: bool, step_s_unprofiled: float | None = None
) -> dict:
    """Run `step` `steps` times under torch.profiler and return `breakdown` of it. Only the
    device is traced on a GPU (CPU op tracing would slow the host and inflate the idle share)."""
    acts = [ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    sync()
    with profile(activities=acts, record_shapes=False, profile_memory=False, with_stack=False) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows, spans = _rows_from_events(prof.events(), gpu)
    res = breakdown(
        rows,
        steps=steps,
        wall_s=wall,
        busy_s=busy_seconds(spans),
        step_s_unprofiled=step_s_unprofiled,
        time_kind="cuda" if gpu else "cpu (dry run: aten ops' self time)",
    )
    res["parse_s"] = time.perf_counter() - t1
    if not rows:
        res["note"] = "the profiler recorded no device work"
    return res


def safe_profile(
    step: Callable[[], object], steps: int, sync: Callable[[], None], gpu: bool, step_s_unprofiled: float | None = None
) -> dict:
    """profile_steps, but a profiler failure is recorded instead of losing the measurement."""
    try:
        return profile_steps(step, steps, sync, gpu, step_s_unprofiled)
    except Exception as err:  # noqa: BLE001 -- the throughput figures matter more than the profile
        return {"error": f"{type(err).__name__}: {err}"}
