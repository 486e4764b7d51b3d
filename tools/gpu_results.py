#!/usr/bin/env python
"""Markdown tables for docs/benchmarks.md from what tools/gpu_session.sh returns.

    python tools/gpu_results.py OUT_DIR            # the device tool's files_at folder
    python tools/gpu_results.py OUT_DIR > /tmp/gpu_tables.md

Reads whichever of session.log, correct.json, bench_360m.json, kernels.json, bench_1p7b.json,
grown_360m.json, growth.json and train_short.json exist (a step that was skipped or cut short
leaves its file out or partial; a JSON that is not a file of OUT_DIR is read from its
results.tar.gz) and prints one section per step, with the issues' targets marked MET / MISSED.
grown_360m (the 360M config's schedule and stages) joins bench_360m (its static and HF parts) in
one report. A number missing from the input is printed as "-", never guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
from typing import Any

# Issue 8: static engine tokens/s over HF + torch.compile, per model; grown vs static wall clock
# within 95% of the FLOPs prediction; growth operations under 5% of the grown run's time.
HF_RATIO_TARGET = {"bench_360m": 1.3, "bench_1p7b": 1.2}
EFFICIENCY_TARGET = 0.95
GROWTH_SHARE_TARGET = 0.05
BENCH_FILES = (("bench_360m", "SmolLM-360M shapes"), ("bench_1p7b", "SmolLM-1.7B shapes"))


def _load(path: str) -> Any | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _f(x: Any, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _mark(ok: bool | None) -> str:
    return {True: "MET", False: "MISSED", None: "not measured"}[ok]


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ----------------------------------------------------------------------------- session.log

_STEP = re.compile(r"^=== (\w+): rc=(\d+) in (\d+)s")
_SKIP = re.compile(r"^=== SKIP (\w+): (.*)")


def session_steps(log: str) -> list[dict]:
    """Each step's outcome from the lines gpu_session.sh prints."""
    out = []
    for line in log.splitlines():
        if m := _STEP.match(line):
            rc = int(m.group(2))
            out.append(
                {
                    "step": m.group(1),
                    "rc": rc,
                    "seconds": int(m.group(3)),
                    "outcome": "ok"
                    if rc == 0
                    else "stopped at its time limit"
                    if rc == 124
                    else "killed"
                    if rc == 137
                    else f"failed (exit {rc})",
                }
            )
        elif m := _SKIP.match(line):
            out.append({"step": m.group(1), "rc": None, "seconds": None, "outcome": f"skipped: {m.group(2)}"})
    return out


def session_section(log: str) -> list[str]:
    steps = session_steps(log)
    smoke = "SMOKE MODE" in log
    out = ["## GPU session steps", ""]
    if smoke:
        out += ["**Smoke mode (GS_SMOKE=1): CPU-sized work; no number below is a measurement.**", ""]
    if not steps:
        return out + ["session.log names no step.", ""]
    return out + [
        _table(["step", "outcome", "seconds"], [[s["step"], s["outcome"], _f(s["seconds"], "d")] for s in steps]),
        "",
    ]


# ----------------------------------------------------------------------------- bench


def bench_rows(name: str, rep: dict) -> dict:
    """The figures of one bench report that the tables use (None where not measured)."""
    st, hf = rep.get("static") or {}, rep.get("hf") or {}
    eager, comp = hf.get("eager") or {}, hf.get("compile") or {}
    sch = rep.get("schedule") or {}
    target = HF_RATIO_TARGET.get(name)
    r_comp = ratio(st.get("tokens_per_s"), comp.get("tokens_per_s"))
    eff = sch.get("efficiency")
    share = sch.get("growth_fraction_of_grown_wall")
    # The compressed run keeps every growth but has only total_steps of training, so its growth
    # share is far above the full run's: project the training time to the config's length
    # (same proportions, hence the same per-stage split) with the growth seconds unchanged.
    cfg_steps = ((rep.get("settings") or {}).get("growth") or {}).get("config_steps")
    g_s, tr_s = sch.get("growth_s"), (sch.get("grown") or {}).get("train_s")
    proj = (
        g_s / (g_s + tr_s * cfg_steps / sch["total_steps"])
        if None not in (g_s, tr_s, cfg_steps) and sch.get("total_steps")
        else None
    )
    return {
        "static_tps": st.get("tokens_per_s"),
        "eager_tps": eager.get("tokens_per_s"),
        "compile_tps": comp.get("tokens_per_s"),
        "ratio_eager": ratio(st.get("tokens_per_s"), eager.get("tokens_per_s")),
        "ratio_compile": r_comp,
        "ratio_target": target,
        "ratio_ok": None if r_comp is None or target is None else r_comp >= target,
        "static_mfu": st.get("mfu"),
        "static_mfu_causal": st.get("mfu_causal"),
        "compile_mfu": comp.get("mfu"),
        "compile_mfu_causal": comp.get("mfu_causal"),
        "static_mem": st.get("peak_memory_gib"),
        "compile_mem": comp.get("peak_memory_gib"),
        "eager_mem": eager.get("peak_memory_gib"),
        "compile_first_step_s": comp.get("first_step_s"),
        "predicted": sch.get("predicted_speedup"),
        "measured": sch.get("measured_speedup"),
        "measured_train_only": sch.get("measured_speedup_train_only"),
        "efficiency": eff,
        "efficiency_ok": None if eff is None else eff >= EFFICIENCY_TARGET,
        "growth_share": share,
        "growth_share_projected": proj,
        "config_steps": cfg_steps,
        "growth_share_ok": None if proj is None else proj < GROWTH_SHARE_TARGET,
        "growth_s": g_s,
    }


def bench_section(reports: dict[str, dict]) -> list[str]:
    if not reports:
        return []
    out = ["## Training throughput vs Hugging Face Llama (issue 8)", ""]
    first = next(iter(reports.values()))
    env, s = first.get("environment") or {}, first.get("settings") or {}
    gpu = env.get("gpu") or {}
    out += [
        f"`grow-megatron bench` ({env.get('date_utc', '-')}), {gpu.get('name', env.get('device', '-'))}, "
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, transformers "
        f"{env.get('transformers')}, megatron-core {env.get('megatron_core')}; "
        f"{'DRY RUN (CPU, meaningless numbers)' if s.get('dry_run') else 'bf16' if s.get('bf16') else 'fp32'}; "
        f"MFU over {_f(s.get('peak_tflops'), 'g')} TFLOP/s. Each figure: median of {s.get('steps_per_stage')} "
        f"steps after {s.get('warmup')} warm-up steps.",
        "",
    ]
    rows, grown = [], []
    for name, label in BENCH_FILES:
        rep = reports.get(name)
        if rep is None:
            continue
        b = bench_rows(name, rep)
        st = rep.get("settings") or {}
        what = f"{label}, {st.get('batch')}x{st.get('seq')}"
        rows.append(
            [
                what,
                _f(b["static_tps"], ",.0f"),
                _f(b["eager_tps"], ",.0f"),
                _f(b["compile_tps"], ",.0f"),
                _f(b["ratio_eager"], ".2f") + "x" if b["ratio_eager"] else "-",
                (_f(b["ratio_compile"], ".2f") + "x" if b["ratio_compile"] else "-")
                + f" (target {b['ratio_target']}x: {_mark(b['ratio_ok'])})",
                f"{_pct(b['static_mfu'])} / {_pct(b['static_mfu_causal'])}",
                f"{_pct(b['compile_mfu'])} / {_pct(b['compile_mfu_causal'])}",
                f"{_f(b['static_mem'], '.1f')} / {_f(b['compile_mem'], '.1f')}",
            ]
        )
        grown.append(
            [
                what,
                _f(b["predicted"], ".3f"),
                _f(b["measured"], ".3f"),
                _f(b["measured_train_only"], ".3f"),
                f"{_pct(b['efficiency'])} ({_mark(b['efficiency_ok'])})",
                f"{_f(b['growth_s'], '.2f')} s = {_pct(b['growth_share'])}",
                f"{_pct(b['growth_share_projected'], 2)} of {_f(b['config_steps'], ',d')} steps "
                f"({_mark(b['growth_share_ok'])})",
            ]
        )
        for part, err in (rep.get("errors") or {}).items():
            out.append(f"- {name}: part `{part}` failed: {err}")
    if any((r.get("errors") or {}) for r in reports.values()):
        out.append("")
    out += [
        _table(
            [
                "model, batch x seq",
                "static tokens/s",
                "HF eager tokens/s",
                "HF compile tokens/s",
                "static / HF eager",
                "static / HF compile",
                "static MFU (paper / causal)",
                "HF compile MFU (paper / causal)",
                "peak GiB static / HF compile",
            ],
            rows,
        ),
        "",
    ]
    out += [
        "Grown vs static (the config's PROP schedule compressed; targets: measured / predicted >= "
        f"{EFFICIENCY_TARGET:.0%}, growth time < {GROWTH_SHARE_TARGET:.0%} of the grown run):",
        "",
        _table(
            [
                "model",
                "predicted speedup",
                "measured (wall)",
                "measured (steps only)",
                "measured / predicted",
                "growth time (share of the compressed run)",
                "growth share projected to the config's run",
            ],
            grown,
        ),
        "",
    ]
    for name, label in BENCH_FILES:
        rep = reports.get(name)
        if rep and (rep.get("stages") or []):
            out += [
                f"Per stage, {label} (grown through grow()):",
                "",
                _table(
                    ["stage", "depth", "tokens/s", "MFU (paper)", "peak GiB", "grow() s"],
                    [
                        [
                            str(r["stage"]),
                            str(r["depth"]),
                            _f(r["tokens_per_s"], ",.0f"),
                            _pct(r.get("mfu")),
                            _f(r["peak_memory_gib"], ".1f"),
                            _f(r.get("grow_s"), ".2f"),
                        ]
                        for r in rep["stages"]
                    ],
                ),
                "",
            ]
    out += profile_section(reports)
    return out


def profile_section(reports: dict[str, dict]) -> list[str]:
    from grow_megatron.bench.report import format_profiles

    out = []
    for name, label in BENCH_FILES:
        rep = reports.get(name)
        if not rep:
            continue
        lines = format_profiles(rep)
        if lines:
            # One heading level down: these sit under the throughput section.
            out += [f"### Where the time goes, {label}", ""] + [
                ("#" + ln if ln.startswith("##") else ln) for ln in lines[2:]
            ]
    return out


# ----------------------------------------------------------------------------- correct (issue 18, step 1)


def _errs(errors: dict, a: str, b: str) -> str:
    """'name a_err / b_err' per tensor, a compact cell."""
    return "; ".join(f"{n} {_f(e.get(a), '.1e')} / {_f(e.get(b), '.1e')}" for n, e in (errors or {}).items())


def _losses(rec: dict | None) -> str:
    return ", ".join(f"{v:.4f}" for v in ((rec or {}).get("losses") or {}).values()) or "-"


def correct_section(rep: dict) -> list[str]:
    env, summ = rep.get("environment") or {}, rep.get("summary") or {}
    out = [
        "## Correct on CUDA (issue 18, step 1)",
        "",
        f"`python {env.get('command', 'gpu_correct.py')}` ({env.get('date_utc', '-')}) on {env.get('device', '-')}"
        + (f" (sm {env['capability']})" if env.get("capability") else "")
        + f", torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn', '-')}, triton "
        f"{env.get('triton')}, megatron-core {env.get('megatron_core')}."
        + (" **SMOKE: tiny sizes on CPU; nothing below says anything about a GPU.**" if rep.get("smoke") else ""),
        "",
        f"**{summ.get('passed', 0)} of {summ.get('checks', 0)} checks passed: "
        f"{'MET' if summ.get('ok') else 'MISSED'}.**"
        + (f" Failed: {'; '.join(summ['failed'])}." if summ.get("failed") else "")
        + (f" Undecided: {'; '.join(summ['undecided'])}." if summ.get("undecided") else ""),
        "",
    ]
    for part, err in (rep.get("errors") or {}).items():
        out.append(f"- part `{part}`: {err}")
    if rep.get("errors"):
        out.append("")
    if rep.get("kernels"):
        out += [
            "Each Triton kernel against its PyTorch reference at the benchmark shapes, bf16, outputs and "
            "gradients (outputs NaN-poisoned); pass: error against fp64 <= 2x PyTorch's own bf16 error. "
            "Cells: relative error ours / PyTorch bf16, both against fp64.",
            "",
            _table(
                ["kernel", "case", "shape", "outcome", "errors (ours / torch)", "seconds"],
                [
                    [
                        k["kernel"],
                        k["case"],
                        "x".join(map(str, k["shape"])),
                        _mark_check(k.get("ok")),
                        k.get("error") or _errs(k.get("errors"), "ours", "torch"),
                        _f(k.get("seconds"), ".1f"),
                    ]
                    for k in rep["kernels"]
                ],
            ),
            "",
        ]
        out += [f"- {k['kernel']} {k['case']}: {f}" for k in rep["kernels"] for f in k.get("failures") or []]
    for sd in rep.get("sdpa") or []:
        acc = sd.get("fused_accepts_native") or {}
        ms = sd.get("fwd_bwd_ms") or {}
        out += [
            "SDPA's native GQA (`enable_gqa`) against the repeat_interleave path, bf16, forward and backward "
            "(cells: error native / repeat, against the repeat path in fp64):",
            "",
            _table(
                [
                    "shape",
                    "fused kernels taking native GQA",
                    "engine takes native",
                    "errors (native / repeat)",
                    "fwd+bwd ms native / repeat",
                    "outcome",
                ],
                [
                    [
                        sd.get("shape", "-"),
                        ", ".join(n for n, ok in acc.items() if ok) or "-",
                        str(sd.get("engine_takes_native", "-")),
                        sd.get("error") or _errs(sd.get("errors"), "native", "repeat"),
                        f"{_f(ms.get('native'), '.3f')} / {_f(ms.get('repeat'), '.3f')}",
                        _mark_check(sd.get("ok")),
                    ]
                ],
            ),
            "",
        ]
    if rep.get("engine"):
        rows = []
        for e in rep["engine"]:
            if e.get("error"):
                rows.append([e["name"], e.get("shape", "-"), "-", "-", "-", f"FAILED: {e['error']}", "-", "-"])
                continue
            ov, r = e.get("on_vs_off") or {}, e.get("resume") or {}
            on = e.get("kernels_on") or {}
            rows.append(
                [
                    e["name"],
                    e.get("shape", "-"),
                    ", ".join(map(str, e.get("growth_steps") or [])) or "-",
                    _losses(on),
                    _losses(e.get("kernels_off")),
                    f"{_mark_check(ov.get('ok'))}: max rel diff {_f(ov.get('max_rel_diff'), '.1e')} "
                    f"(tol {_f(ov.get('rtol'), 'g')})" + (f"; {ov['note']}" if ov.get("note") else ""),
                    f"{_mark_check(r.get('ok'))} (stop at {r.get('stop_at', '-')}): {r.get('verdict', '-')}; "
                    f"max rel diff {_f(r.get('max_rel_diff'), '.1e')}",
                    _f(on.get("peak_gib"), ".2f"),
                ]
            )
        out += [
            "The engine, bf16, under torch's deterministic algorithms: the same config with model.kernels on and "
            "off (losses per step), and the kernels-on run stopped just after its growth, saved and resumed "
            "(pass: the resumed run's losses equal the uninterrupted run's bit for bit).",
            "",
            _table(
                [
                    "config",
                    "shape",
                    "growth at step",
                    "losses, kernels on",
                    "losses, kernels off",
                    "on vs off",
                    "grow, save, resume",
                    "peak GiB (on)",
                ],
                rows,
            ),
            "",
        ]
        warn = sorted({w for e in rep["engine"] for w in e.get("nondeterminism_warnings") or []})
        out += [f"- nondeterministic op (torch's warning): {w}" for w in warn] + ([""] if warn else [])
    p = rep.get("pytest")
    if p:
        out += [
            f"Kernel tests on this device (`pytest {' '.join(p.get('files') or [])}`): "
            f"{_f(p.get('passed'), 'd')} passed, {len(p.get('failed') or [])} failed, {_f(p.get('skipped'), 'd')} "
            f"skipped in {_f(p.get('seconds'), '.0f')} s"
            + (", **stopped at its time limit**" if p.get("timed_out") else "")
            + f": {_mark_check(p.get('ok'))}.",
            "",
        ]
        out += [f"- {f['test']}: {f['kind']}: {f['message']}" for f in p.get("failed") or []]
        if p.get("failed"):
            out.append("")
    return out


def _mark_check(ok: bool | None) -> str:
    return {True: "ok", False: "FAILED", None: "undecided"}[ok]


# ----------------------------------------------------------------------------- kernels


def kernel_rows(rep: dict) -> list[dict]:
    """One row per (kernel, shape, mode): each provider's ms, ours' GB/s and % of copy, and
    each provider's time over ours (> 1: ours is faster)."""
    groups: dict[tuple, dict] = {}
    for r in rep.get("results") or []:
        if r["mode"] not in ("fwd", "fwd+bwd") or r["kernel"].endswith("tune"):
            continue
        key = (r["kernel"], tuple(r["shape"]), r["mode"])
        g = groups.setdefault(
            key, {"kernel": r["kernel"], "shape": list(r["shape"]), "mode": r["mode"], "ms": {}, "notes": []}
        )
        prov = _provider(r["provider"])
        g["ms"][prov] = r["ms"]
        if prov == "ours":
            g.update(gbps=r.get("gbps"), pct_of_copy=r.get("pct_of_copy"), peak_mib=r.get("peak_mib"))
        elif prov == "eager":
            g["eager_peak_mib"] = r.get("peak_mib")
        if r.get("note", "").startswith("failed"):
            g["notes"].append(f"{r['provider']}: {r['note']}")
    rows = list(groups.values())
    for g in rows:
        ours = g["ms"].get("ours")
        g["speedup"] = {p: ratio(ms, ours) for p, ms in g["ms"].items() if p != "ours"}
    return rows


def _provider(p: str) -> str:
    if p.startswith("liger"):
        return "liger"
    if p.startswith("eager"):
        return "eager"
    return p


def kernels_section(rep: dict) -> list[str]:
    out = [
        "## Kernels (issue 4)",
        "",
        f"`tools/bench_kernels.py` on {rep.get('device')}, torch {rep.get('torch')}, triton {rep.get('triton')}, "
        f"Liger-Kernel {rep.get('liger') or 'absent'}; {rep.get('timing')}; device copy "
        f"{_f(rep.get('copy_gbps'), ',.0f')} GB/s (read + write)."
        + (" **DRY RUN: meaningless numbers.**" if rep.get("dry_run") else ""),
        "",
    ]
    for n in rep.get("notes") or []:
        out.append(f"- note: {n}")
    provs = ["eager", "torch.compile", "liger"]
    rows = []
    for g in kernel_rows(rep):
        sp = g["speedup"]
        rows.append(
            [
                g["kernel"],
                "x".join(map(str, g["shape"])),
                g["mode"],
                _f(g["ms"].get("ours"), ".3f"),
                _f(g.get("gbps"), ",.0f"),
                _f(g.get("pct_of_copy"), ".1f"),
            ]
            + [f"{_f(g['ms'].get(p), '.3f')} ({_f(sp.get(p), '.2f')}x)" if p in g["ms"] else "-" for p in provs]
            + [
                _f(g["ms"].get("ours fused [M,2F]"), ".3f"),
                f"{_f(g.get('peak_mib'), ',.0f')} / {_f(g.get('eager_peak_mib'), ',.0f')}"
                if g["kernel"] == "fused_linear_ce"
                else "-",
            ]
        )
    out += [""] if rep.get("notes") else []
    out += [
        _table(
            [
                "kernel",
                "shape",
                "mode",
                "ours ms",
                "ours GB/s",
                "ours % of copy",
                "eager ms (eager / ours)",
                "torch.compile ms (/ ours)",
                "Liger ms (/ ours)",
                "ours fused [M,2F] ms",
                "peak MiB ours / unfused",
            ],
            rows,
        ),
        "",
    ]
    checks = [r for r in rep.get("results") or [] if r["mode"] == "check"]
    if checks:
        out += [
            "Our outputs and gradients against eager at the benchmark shapes (relative error): "
            + "; ".join(
                f"{r['kernel']} {'x'.join(map(str, r['shape']))}: "
                + ", ".join(f"{k} {v:.1e}" for k, v in r["rel_err"].items())
                for r in checks
            ),
            "",
        ]
    out += [
        "Targets:",
        "",
        _table(
            ["target", "value", "status"],
            [[t["target"], _value(t["value"]), _mark(t["ok"])] for t in rep.get("targets") or []],
        ),
        "",
    ]
    fails = [n for g in kernel_rows(rep) for n in g["notes"]]
    out += [f"- {n}" for n in fails]
    return out


def _value(v: Any) -> str:
    if isinstance(v, list):
        return " vs ".join(_value(x) for x in v)
    return _f(v, ".4g") if isinstance(v, (int, float)) else "-" if v is None else str(v)


# ----------------------------------------------------------------------------- train_short, growth


def growth_transitions(rec: dict) -> list[dict]:
    """Each growth with the median tokens/s of the stage before and after it (train_record's
    per-depth summary) and the first step after it."""
    by_depth = {s["depth"]: s for s in rec.get("stages") or []}
    out = []
    for g in rec.get("growths") or []:
        a, b = by_depth.get(g["old_depth"], {}), by_depth.get(g["new_depth"], {})
        out.append(
            {
                "step": g["step"],
                "old_depth": g["old_depth"],
                "new_depth": g["new_depth"],
                "seconds": g.get("seconds"),
                "tps_before": a.get("tokens_per_s_median"),
                "tps_after": b.get("tokens_per_s_median"),
                "tps_first_after": b.get("first_step_tokens_per_s"),
                "ratio": ratio(b.get("tokens_per_s_median"), a.get("tokens_per_s_median")),
            }
        )
    return out


def train_section(rec: dict) -> list[str]:
    env, st = rec.get("environment") or {}, rec.get("settings") or {}
    gpu = env.get("gpu") or {}
    out = [
        "## A short grown training run (train_record)",
        "",
        f"`python -m grow_megatron.cli.train_record {rec.get('config')}` on "
        f"{gpu.get('name', env.get('device', '-'))}: {st.get('steps')} steps of {st.get('global_batch_size')} x "
        f"{st.get('seq_length')} tokens (micro-batch {st.get('micro_batch_size')}), "
        f"precision {st.get('precision')}, "
        f"kernels {st.get('kernels')}; tokens/s include the data loader."
        + ("" if rec.get("completed") else " **The run did not complete (stopped or failed): partial record.**"),
        "",
    ]
    out += [
        _table(
            [
                "depth",
                "steps",
                "first step",
                "tokens/s (median, after its first step)",
                "tokens/s of its first step",
                "peak GiB",
            ],
            [
                [
                    str(s["depth"]),
                    str(s["steps"]),
                    str(s["first_step"]),
                    _f(s["tokens_per_s_median"], ",.0f"),
                    _f(s["first_step_tokens_per_s"], ",.0f"),
                    _f(s.get("peak_memory_gib"), ".2f"),
                ]
                for s in rec.get("stages") or []
            ],
        ),
        "",
    ]
    tr = growth_transitions(rec)
    if tr:
        out += [
            _table(
                [
                    "growth at step",
                    "depth",
                    "grow() s",
                    "tokens/s before",
                    "tokens/s after (median)",
                    "after / before",
                    "first step after",
                ],
                [
                    [
                        str(t["step"]),
                        f"{t['old_depth']} -> {t['new_depth']}",
                        _f(t["seconds"], ".2f"),
                        _f(t["tps_before"], ",.0f"),
                        _f(t["tps_after"], ",.0f"),
                        _f(t["ratio"], ".3f"),
                        _f(t["tps_first_after"], ",.0f"),
                    ]
                    for t in tr
                ],
            ),
            "",
        ]
    if rec.get("eval_losses"):
        out += ["Held-out loss: " + ", ".join(f"step {k}: {v:.3f}" for k, v in rec["eval_losses"].items()), ""]
    return out


def growth_section(rows: list[dict]) -> list[str]:
    dev = rows[0].get("device", "-") if rows else "-"
    return [
        "## Growth-operation latency and memory (issue 3), one process",
        "",
        f"`grow-megatron bench-growth` on {dev}: after one training step, grow by one block "
        "(LIDAS); memory is torch.cuda's allocated (peak: max allocated during the growth).",
        "",
        _table(
            ["shape", "growth", "old engine", "seconds", "GiB before", "GiB peak", "GiB after", "params after"],
            [
                [
                    r["preset"],
                    f"{r['old_depth']} -> {r['new_depth']}",
                    "host-staged" if r.get("host_staged") else "kept on device",
                    _f(r["seconds"], ".2f"),
                    _f(r["mem_before_gib"], ".2f"),
                    _f(r["mem_peak_gib"], ".2f"),
                    _f(r["mem_after_gib"], ".2f"),
                    _f(r.get("params_after_local"), ",d"),
                ]
                for r in rows
            ],
        ),
        "",
    ]


# ----------------------------------------------------------------------------- main

# Each step's JSON, in the session's order, and where results.tar.gz holds it (the tar is of the
# session's work folder, whose bench steps write DIR/report.json).
RESULT_FILES = (
    "correct.json",
    "scale.json",
    "bench_360m.json",
    "kernels.json",
    "bench_1p7b.json",
    "grown_360m.json",
    "growth.json",
    "fp8_360m.json",
    "train_short.json",
)
TAR_MEMBERS = {
    "bench_360m.json": "bench_360m/report.json",
    "bench_1p7b.json": "bench_1p7b/report.json",
    "grown_360m.json": "grown_360m/report.json",
    "fp8_360m.json": "fp8_360m/report.json",
}


def scale_section(rep: dict) -> list[str]:
    """tools/bench_scale.py on one device (issue 24): memory and step time per variant, and two
    checks: recompute and overlap leave the loss exactly as without them (CPU: bit-equal), and
    full recompute keeps less for backward than none."""
    rows = rep.get("rows") or []
    if not rows:
        return []
    by = {r["variant"]: r for r in rows}
    table = [
        [
            r["layout"],
            r["variant"],
            _f(r.get("kept_after_forward_MiB"), ",.0f"),
            _f(r.get("peak_activation_MiB"), ",.0f"),
            _f(r.get("held_MiB"), ",.0f"),
            _f(r.get("step_s_median"), ".3f"),
            _f(r.get("loss"), ".6f"),
        ]
        for r in rows
    ]
    off = by.get("off")
    same = None if off is None else all(r.get("loss") == off.get("loss") for r in rows)
    full = by.get("recompute full")
    less = (
        None
        if off is None or full is None
        else full.get("kept_after_forward_MiB", 0) < off.get("kept_after_forward_MiB", 0)
    )
    a = rep.get("args") or {}
    return [
        "## Scale features on one device (tools/bench_scale.py)",
        "",
        f"{a.get('layers')} layers, hidden {a.get('hidden')}, {a.get('micro')} x {a.get('seq')} tokens per micro-batch, "
        f"{a.get('microbatches')} micro-batches; device {rows[0].get('device')}.",
        "",
        _table(
            [
                "layout",
                "variant",
                "kept for backward (MiB)",
                "peak activations (MiB)",
                "weights+grads+state (MiB)",
                "step s",
                "loss",
            ],
            table,
        ),
        "",
        f"- every variant's loss equals the one without them: {_mark_check(same)}",
        f"- full recompute keeps less for backward than none: {_mark_check(less)}",
        "",
    ]


def _static_row(label: str, st: dict) -> list[str]:
    """One static engine of a bench report (its "static" part) as a table row."""
    return [
        label,
        _f(st.get("tokens_per_s"), ",.0f"),
        _pct(st.get("mfu")),
        _f(st.get("step_s_median"), ".4f"),
        _f(st.get("peak_memory_gib"), ".2f"),
        _f(st.get("last_loss"), ".4f"),
    ]


def fp8_section(fp8: dict, bf16: dict | None) -> list[str]:
    """model.fp8 (issue 23): the 360M static engine with FP8 linears beside bench_360m's static
    number of the same config, batch and steps."""
    st = fp8.get("static") or {}
    if not st:
        return []
    base = (bf16 or {}).get("static") or {}
    over = " ".join(f"--set {o}" for o in (fp8.get("settings") or {}).get("overrides") or [])
    speedup = ratio(st.get("tokens_per_s"), base.get("tokens_per_s"))
    return [
        "## FP8 linears (model.fp8)",
        "",
        f"The 360M static engine with `{over}` against bench_360m's static engine (same config and batch).",
        "",
        _table(
            ["engine", "tokens/s", "MFU", "step s", "peak GiB", "last loss"],
            [_static_row("fp8", st), _static_row("as configured (bench_360m)", base)],
        ),
        "",
        f"- fp8 / bench_360m tokens/s: {_f(speedup, '.2f')}",
        "",
    ]


def load_result(out_dir: str, name: str) -> tuple[Any | None, str | None]:
    """(the JSON, where it was read) from OUT_DIR/name, else from OUT_DIR/results.tar.gz."""
    if (d := _load(os.path.join(out_dir, name))) is not None:
        return d, name
    tar = os.path.join(out_dir, "results.tar.gz")
    if not os.path.exists(tar):
        return None, None
    member = TAR_MEMBERS.get(name, name)
    with tarfile.open(tar) as t:
        for m in (member, "./" + member):
            try:
                f = t.extractfile(m)
            except KeyError:
                continue
            if f is not None:
                return json.load(f), f"results.tar.gz:{m}"
    return None, None


def merge_grown(bench: dict | None, grown: dict | None) -> dict | None:
    """bench_360m (static, HF) and grown_360m (schedule, stages) are two runs of the same config
    and settings: one report, the grown run's parts and errors added to the static one's."""
    if grown is None or bench is None:
        return bench if grown is None else grown
    out = dict(bench)
    for key in ("schedule", "stages", "plot"):
        if grown.get(key):
            out[key] = grown[key]
    out["errors"] = {
        **(bench.get("errors") or {}),
        **{f"{part} (grown_360m)": e for part, e in (grown.get("errors") or {}).items()},
    }
    return out


def render(out_dir: str) -> str:
    parts: list[str] = []
    log = os.path.join(out_dir, "session.log")
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            parts += session_section(f.read())
    got, where = {}, {}
    for name in RESULT_FILES:
        data, src = load_result(out_dir, name)
        if data is not None:
            got[name], where[name] = data, src
    if "correct.json" in got:
        parts += correct_section(got["correct.json"])
    if "scale.json" in got:
        parts += scale_section(got["scale.json"])
    reports = {
        "bench_360m": merge_grown(got.get("bench_360m.json"), got.get("grown_360m.json")),
        "bench_1p7b": got.get("bench_1p7b.json"),
    }
    parts += bench_section({n: r for n, r in reports.items() if r is not None})
    if "kernels.json" in got:
        parts += kernels_section(got["kernels.json"])
    if "growth.json" in got:
        parts += growth_section(got["growth.json"])
    if "fp8_360m.json" in got:
        parts += fp8_section(got["fp8_360m.json"], got.get("bench_360m.json"))
    if "train_short.json" in got:
        parts += train_section(got["train_short.json"])
    from_tar = [f"{n} ({where[n]})" for n in RESULT_FILES if n in where and where[n] != n]
    if from_tar:
        parts += [f"Read from results.tar.gz: {', '.join(from_tar)}.", ""]
    missing = [
        f for f in ("session.log",) + RESULT_FILES if f not in got and not os.path.exists(os.path.join(out_dir, f))
    ]
    if missing:
        parts += [f"Not returned: {', '.join(missing)} (skipped, cut short before writing, or not asked for).", ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python tools/gpu_results.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out_dir", help="the folder the GPU session's files came back to ($OUT / files_at)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.out_dir):
        print(f"gpu_results: {args.out_dir!r} is not a folder", file=sys.stderr)
        return 2
    sys.stdout.write(render(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
