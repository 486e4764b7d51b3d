"""`analyze compare`: every applicable analysis on several models, one markdown report.

The report has one section per analysis: a table of headline numbers per model (see
suite.summarize), the figures with the models overlaid, and a link to the full JSON.
"""

from __future__ import annotations

import math
import os
import time

from grow_megatron.analysis.run import AnalyzeOptions, model_labels, run_on_models, write_analysis
from grow_megatron.analysis.suite import NEEDS_TASKS, NEEDS_TOKENS, QUICK, configs_for, sample_info, summarize

TITLES = {
    "depth-score": "Depth score (Fig. 1A)",
    "tuned-lens": "Tuned lens: KL, top-5 overlap, early exit (Fig. 1B/C)",
    "interventions": "Benchmarked interventions: swap / skip / reverse (Fig. 3, 6)",
    "sublayer": "Sublayer statistics (Fig. 4)",
    "effects": "Skip-effect heatmaps (Fig. 5, 7b)",
    "block-similarity": "Block weight similarity (Fig. 7a)",
}
ORDER = ("depth-score", "tuned-lens", "interventions", "sublayer", "effects", "block-similarity")


def applicable(has_tokens: bool, has_tasks: bool) -> list[str]:
    """Analyses the given inputs allow (task prompts also serve as token data)."""
    out = []
    for n in ORDER:
        if n in NEEDS_TASKS and not has_tasks:
            continue
        if n in NEEDS_TOKENS and not (has_tokens or has_tasks):
            continue
        out.append(n)
    return out


NOISE_NOTE = (
    "± is one standard error: binomial for accuracies (add-two estimate, so 0 of n correct is not ± 0); bootstrap over examples for the "
    "depth score. A difference between two models is *within noise* when it is smaller than two standard "
    "errors of the difference, sqrt(se1² + se2²). Chance: the accuracy of guessing uniformly among each "
    "example's choices. n: what the numbers average over."
)


def _fmt(v) -> str:
    if isinstance(v, tuple):
        val, se = v
        return _fmt(val) if math.isnan(se) else f"{val:.3f} ± {se:.3f}"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def noise_verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    """'0.000 vs 0.060 (diff +0.060 ± 0.050, within noise)' for two (value, se) pairs."""
    d, se = b[0] - a[0], math.hypot(a[1], b[1])
    if math.isnan(se) or math.isnan(d):
        return f"{a[0]:.3f} vs {b[0]:.3f}"
    word = "within noise" if abs(d) <= 2 * se else f"beyond noise, {abs(d) / se:.1f} SE" if se > 0 else "beyond noise"
    return f"{a[0]:.3f} vs {b[0]:.3f} (diff {d:+.3f} ± {se:.3f}, {word})"


def table(name: str, results: dict[str, dict]) -> list[str]:
    """Markdown table of one analysis' headline numbers (with n, ± SE, chance) and, for two or
    more models, each model's difference from the first one with its noise verdict."""
    per_model = {lbl: {**summarize(name, r), **sample_info(name, r)} for lbl, r in results.items()}
    cols: list[str] = []
    for s in per_model.values():
        cols += [c for c in s if c not in cols]
    if not cols:
        return []
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for lbl, s in per_model.items():
        lines.append(f"| {lbl} | " + " | ".join(_fmt(s.get(c, math.nan)) for c in cols) + " |")
    lines.append("")
    labels = list(per_model)
    for other in labels[1:]:
        for c in cols:
            a, b = per_model[labels[0]].get(c), per_model[other].get(c)
            if isinstance(a, tuple) and isinstance(b, tuple):
                lines.append(f"- {c}, {labels[0]} vs {other}: {noise_verdict(a, b)}")
    if len(lines) > len(per_model) + 3:
        lines.append("")
    return lines


def markdown(
    results: dict[str, dict[str, dict]], files: dict[str, list[str]], out_dir: str, models: list[str], labels: list[str]
) -> str:
    lines = [
        "# Depth analysis comparison",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `grow-megatron analyze compare`.",
        "",
        "| label | model |",
        "|---|---|",
    ]
    lines += [f"| {lbl} | `{m}` |" for lbl, m in zip(labels, models)]
    lines += ["", NOISE_NOTE, ""]
    for name in ORDER:
        if name not in results:
            continue
        lines += [f"## {TITLES[name]}", ""]
        lines += table(name, results[name])
        for p in files.get(name, []):
            rel = os.path.relpath(p, out_dir)
            lines.append(f"![{name}]({rel})" if p.endswith(".png") else f"Full results: [{rel}]({rel})")
            lines.append("")
    return "\n".join(lines)


def compare(opts: AnalyzeOptions, analyses: list[str] | None, overrides: dict[str, dict]) -> str:
    """Run `analyses` (default: every one the inputs allow) on opts.models, write figures, JSON and
    DIR/report.md; returns its path."""
    names = list(analyses or applicable(bool(opts.data), bool(opts.tasks)))
    if opts.quick:  # --set wins over the preset
        overrides = {n: {**QUICK.get(n, {}), **overrides.get(n, {})} for n in set(QUICK) | set(overrides)}
    cfgs = configs_for(names, overrides)
    results = run_on_models(names, opts, cfgs)
    files = {n: write_analysis(n, cfgs[n], results[n], opts.out, opts.mark_blocks) for n in names}
    path = os.path.join(opts.out, "report.md")
    with open(path, "w") as f:
        f.write(markdown(results, files, opts.out, list(opts.models), model_labels(opts)))
    return path
