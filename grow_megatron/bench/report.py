"""The benchmark's outputs: environment record, report.json, report.md tables, throughput.png."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _version(module: str) -> str | None:
    try:
        return version(module)
    except Exception:  # not installed (or no metadata): recorded as absent, not an error
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (for benchmark records)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def environment(argv: list[str], layout: dict, prog: str = "grow-megatron bench") -> dict:
    """Machine and software the numbers were taken on."""
    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([prog, *argv]),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "megatron_core": _version("megatron-core") or _version("megatron_core"),
        "grow_megatron": _version("grow_megatron"),
        "liger_kernel": _version("liger-kernel") or _version("liger_kernel"),
        "device": "cpu",
        "gpu": None,
        "memory_measure": "process RSS (CPU: no per-phase peak)",
        **layout,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(
            device="cuda",
            memory_measure="torch.cuda.max_memory_allocated",
            gpu={
                "name": p.name,
                "capability": f"{p.major}.{p.minor}",
                "multiprocessors": p.multi_processor_count,
                "total_memory_gib": p.total_memory / 2**30,
                "driver": _driver(),
                "count": torch.cuda.device_count(),
            },
        )
    return env


# ----------------------------------------------------------------------------- markdown


def _f(x: Any, fmt: str = "{:,.1f}") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return fmt.format(x)
    return str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_THROUGHPUT_HEADER = [
    "what",
    "depth",
    "tokens/s",
    "TFLOP/s (paper)",
    "MFU (paper)",
    "TFLOP/s (causal)",
    "MFU (causal)",
    "step s (median)",
    "peak mem GiB",
]


def _throughput_row(name: str, r: dict) -> list[str]:
    return [
        name,
        _f(r.get("depth")),
        _f(r["tokens_per_s"], "{:,.0f}"),
        _f(r["tflops"], "{:.4g}"),
        _pct(r["mfu"]),
        _f(r["tflops_causal"], "{:.4g}"),
        _pct(r["mfu_causal"]),
        _f(r["step_s_median"], "{:.4f}"),
        _f(r["peak_memory_gib"], "{:.2f}"),
    ]


def format_markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    gpu = env.get("gpu") or {}
    out = ["# grow-megatron bench", ""]
    if s.get("dry_run"):
        out += ["**Dry run on CPU: tiny shapes, fp32; the numbers check the code path and mean nothing.**", ""]
    out += [
        f"- command: `{env['command']}`",
        f"- date (UTC): {env['date_utc']}",
        f"- device: {gpu.get('name', 'cpu')} (driver {gpu.get('driver', '-')}), "
        f"{env['world_size']} rank(s), TP={env['tp']} PP={env['pp']} DP={env['dp']}",
        f"- software: torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}, "
        f"megatron-core {env['megatron_core']}, Python {env['python']}",
        f"- shape: {s['shape']}; batch {s['batch']} x {s['microbatches']} micro-batch(es) x seq {s['seq']} "
        f"per rank = {s['tokens_per_step']:,} tokens/step; {'bf16' if s['bf16'] else 'fp32'}, kernels "
        f"{'on' if s['use_kernels'] else 'off'}",
        f"- timing: {s['warmup']} warm-up steps, then the median of {s['steps_per_stage']} timed steps; "
        f"MFU over {_f(s['peak_tflops'])} TFLOP/s per GPU ({s['peak_source']}) x {max(1, s['gpus'])} GPU(s)",
        "- FLOPs per token: paper = 6N + 12 L s d (Table 7's count, docs/method.md §6); causal = 6N + 6 L s d "
        "(attention halved, the convention of the H100 reference measurements in docs/benchmarks.md)",
        "",
    ]

    rows = []
    if report.get("static"):
        rows.append(_throughput_row("grow-megatron static", report["static"]))
    for name, r in (report.get("hf") or {}).items():
        if "tokens_per_s" in r:
            rows.append(_throughput_row(f"HF Llama {name}", {"depth": s["shape"]["num_layers"], **r}))
    if rows:
        out += ["## Static model at the final depth", "", _table(_THROUGHPUT_HEADER, rows), ""]
        ratios = report.get("static_vs_hf") or {}
        if ratios:
            out += ["Static engine tokens/s over HF: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), ""]
    for name, r in (report.get("hf") or {}).items():
        if "skipped" in r:
            out += [f"HF {name}: skipped ({r['skipped']})", ""]

    if report.get("stages"):
        rows = [_throughput_row(f"stage {r['stage']}", r) + [_f(r["grow_s"], "{:.3f}")] for r in report["stages"]]
        out += ["## Per stage (grown through grow())", "", _table(_THROUGHPUT_HEADER + ["grow() s"], rows), ""]

    sch = report.get("schedule")
    if sch:
        out += [
            "## Scaled grown vs static run",
            "",
            f"PROP schedule of the config compressed to {sch['total_steps']} steps ({sch['operator']}, growth "
            f"over the first {sch['grow_steps']}; stage steps {sch['stage_steps']}, growths before steps "
            f"{sch['boundaries']}).",
            "",
            _table(
                ["", "grown", "static"],
                [
                    [
                        "wall s (steps + growth)",
                        _f(sch["grown"]["wall_s"], "{:.3f}"),
                        _f(sch["static"]["wall_s"], "{:.3f}"),
                    ],
                    ["training steps s", _f(sch["grown"]["train_s"], "{:.3f}"), _f(sch["static"]["train_s"], "{:.3f}")],
                    ["growth s", _f(sch["grown"]["growth_s"], "{:.3f}"), "-"],
                    [
                        "training PF",
                        _f(sch["flops"]["grown"]["petaflops"], "{:.6g}"),
                        _f(sch["flops"]["static"]["petaflops"], "{:.6g}"),
                    ],
                    [
                        "achieved TFLOP/s (paper count)",
                        _f(sch["grown_tflops"], "{:.4g}"),
                        _f(sch["static_tflops"], "{:.4g}"),
                    ],
                ],
            ),
            "",
            _table(
                ["speedup", "value"],
                [
                    ["predicted (FLOPs ratio, paper count)", f"{sch['predicted_speedup']:.3f}x"],
                    ["measured wall clock", f"{sch['measured_speedup']:.3f}x"],
                    ["measured, training steps only", f"{sch['measured_speedup_train_only']:.3f}x"],
                    ["measured / predicted", _pct(sch["efficiency"])],
                    ["growth time / grown wall", _pct(sch["growth_fraction_of_grown_wall"])],
                ],
            ),
            "",
            _table(
                ["stage", "depth", "steps", "PF", "seconds", "step s (median)", "TFLOP/s"],
                [
                    [
                        str(r["stage"]),
                        str(r["depth"]),
                        str(r["steps"]),
                        _f(r["petaflops"], "{:.6g}"),
                        _f(r["seconds"], "{:.3f}"),
                        _f(r["step_s_median"], "{:.4f}"),
                        _f(r["tflops"], "{:.4g}"),
                    ]
                    for r in sch["grown_stages"]
                ],
            ),
            "",
        ]
        if report.get("plot"):
            out += [f"![throughput]({report['plot']})", ""]
    out += format_profiles(report)
    for note in report.get("notes", []):
        out.append(f"- note: {note}")
    return "\n".join(out).rstrip() + "\n"


def profiled(report: dict) -> list[tuple[str, dict]]:
    """(what, profile) of every measurement that carries one."""
    got = []
    if (report.get("static") or {}).get("profile"):
        got.append(("grow-megatron static", report["static"]["profile"]))
    for name, r in (report.get("hf") or {}).items():
        if r.get("profile"):
            got.append((f"HF Llama {name}", r["profile"]))
    return got


def format_profiles(report: dict) -> list[str]:
    """Markdown of the profiles: device time per category side by side, idle share, top kernels."""
    got = profiled(report)
    if not got:
        return []
    out = ["## Where the time goes (torch.profiler)", ""]
    ok = [(n, p) for n, p in got if "categories" in p]
    for n, p in got:
        if "error" in p:
            out += [f"{n}: profile failed ({p['error']})", ""]
    if not ok:
        return out
    kind = ok[0][1]["time_kind"]
    out += [
        f"Per step, over {ok[0][1]['steps']} profiled steps; times are {kind}. Idle = share of the wall time "
        "in which no kernel runs (host overhead, launch gaps); 'unprofiled' divides the same kernel time by "
        "the step time measured without the profiler.",
        "",
    ]
    cats = [c["category"] for c in ok[0][1]["categories"]]
    rows = []
    for c in cats:
        row = [c]
        for _, p in ok:
            e = next(x for x in p["categories"] if x["category"] == c)
            row.append(f"{e['ms_per_step']:.2f} ({_pct(e['fraction'])})")
        rows.append(row)
    rows.append(["all kernels"] + [f"{p['device_ms_per_step']:.2f}" for _, p in ok])
    rows.append(["busy (union)"] + [f"{p['busy_ms_per_step']:.2f}" for _, p in ok])
    rows.append(["wall (profiled)"] + [f"{p['wall_ms_per_step']:.2f}" for _, p in ok])
    rows.append(["idle share"] + [_pct(p["idle_fraction"]) for _, p in ok])
    rows.append(["idle share vs unprofiled step"] + [_pct(p.get("idle_fraction_unprofiled")) for _, p in ok])
    out += [_table(["ms per step"] + [n for n, _ in ok], rows), ""]
    for n, p in ok:
        if p.get("triton_kernels"):
            out += [
                f"{n}, our Triton kernels: "
                + ", ".join(
                    f"{k['name']} {k['ms_per_step']:.2f} ms ({_pct(k['fraction'])})" for k in p["triton_kernels"]
                ),
                "",
            ]
        out += [
            f"### Top kernels: {n}",
            "",
            _table(
                ["kernel", "category", "calls", "ms per step", "share"],
                [
                    [
                        _kernel_name(k["name"]),
                        k["category"],
                        str(k["calls"]),
                        f"{k['ms_per_step']:.3f}",
                        _pct(k["fraction"]),
                    ]
                    for k in p["top"]
                ],
            ),
            "",
        ]
    return out


def _kernel_name(name: str, width: int = 90) -> str:
    """A kernel name fit for a table cell: templated C++ names run to hundreds of characters."""
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


# ----------------------------------------------------------------------------- plot


def plot_throughput(schedule: dict, path: str, title: str) -> None:
    """Tokens/s per step of the grown and the static run, growth events marked (Agg, no pyplot)."""
    fig = Figure(figsize=(9, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, style in (("static", "-"), ("grown", "-")):
        recs = schedule[name]["steps"]
        ax.plot([r["step"] for r in recs], [r["tokens_per_s"] for r in recs], style, lw=1.2, label=name)
    for i, g in enumerate(schedule["grown"]["growths"]):
        ax.axvline(g["step"] - 0.5, color="grey", ls="--", lw=0.8, label="growth" if i == 0 else None)
        ax.annotate(
            f"{g['old_depth']}\u2192{g['new_depth']}\n{g['seconds']:.2f}s",
            (g["step"] - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            ha="left",
            va="top",
            color="grey",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("tokens / s (per step)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(report: dict, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md")}
    if report.get("schedule"):
        paths["png"] = os.path.join(out_dir, "throughput.png")
        report["plot"] = "throughput.png"
        g = report["environment"].get("gpu") or {}
        plot_throughput(
            report["schedule"],
            paths["png"],
            f"{report['settings']['config']} on {g.get('name', 'cpu')}: grown vs static "
            f"({report['schedule']['total_steps']} steps)",
        )
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1, allow_nan=True)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(format_markdown(report))
    return paths


def print_summary(report: dict, file=sys.stdout) -> None:
    print(format_markdown(report), file=file, flush=True)
