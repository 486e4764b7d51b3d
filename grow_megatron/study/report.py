"""The study report: OUT_DIR/report.md (+ summary.json and figures/).

Every number in the summary table is read from the per-variant output files the steps wrote
(train.json, eval.json, analysis/*.json, loop/seedS/loop_sweep.json); nothing is recomputed
from a model. Where a cell needs one number from a per-layer list (the late-layer top-5
overlap), the rule is `late_overlap` below. The all-variant figures are drawn by the analyses'
own plotting (grow_megatron.analysis.plots) from the merged per-variant JSONs, so they are the
figures `analyze compare` would draw for all models together, on shared axes.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass

from grow_megatron.config.rundir import METRICS
from grow_megatron.study.config import StudyConfig
from grow_megatron.study.layout import Step, StudyLayout, label, plan, read_json, write_json

ANALYSIS_FILES = {
    "tuned-lens": "tuned_lens.json",
    "depth-score": "depth_score.json",
    "effects": "effects.json",
    "interventions": "interventions.json",
    "sublayer": "sublayer.json",
    "block-similarity": "block_similarity.json",
}

# (key, column header, number format)
COLUMNS = (
    ("nll", "held-out NLL (nats)", "{:.4f}"),
    ("accuracy", "primitives acc", "{:.3f}"),
    ("depth_score", "depth score", "{:.3f}"),
    ("late_overlap", "late top-5 overlap", "{:.3f}"),
    ("flops", "train FLOPs", "{:.4e}"),
    ("train_seconds", "train time (s)", "{:.1f}"),
)

CAPTIONS = {
    "tuned-lens": (
        "Tuned lens per layer: KL to the final distribution, top-5 overlap with the final top-5, and "
        "early-exit accuracy relative to the full model. Read: how late each model's prediction settles. "
        "The paper (Fig. 1B/C) finds lower late-layer overlap and accuracy still rising up to the last "
        "layer for MIDAS/LIDAS, an early plateau for the static baseline and earlier still for LN-Scaling."
    ),
    "depth-score": (
        "Depth score (Csordás et al.): the expected layer index of the future-token effect of skipping "
        "a layer, and its distribution over layers. Read: a higher score means computation that matters "
        "for later tokens sits deeper. The paper (Fig. 1A) finds higher scores for grown models and the "
        "lowest for LN-Scaling."
    ),
    "interventions": (
        "Task accuracy after swapping adjacent windows of k layers, skipping k layers, or reversing 4 "
        "layers, at every start layer (dashed: unmodified ± 1 SE; dotted: chance). Read: how order-"
        "dependent the layers are. The paper (Fig. 3, 6) finds grown models tolerate swaps of larger "
        "blocks and suffer most from reversals straddling block boundaries; meaningful only where the "
        "unmodified accuracy is clearly above chance."
    ),
    "sublayer": (
        "Relative contribution ‖a_i‖/‖h_i‖ and cosine(a_i, h_i) of attention (and MLP) outputs to the residual "
        "stream per layer (vertical lines: block starts). Read: the paper (Fig. 4) finds a cyclical pattern "
        "repeating every block in the middle of grown models (attention contribution rising through each "
        "block), flat for the baseline."
    ),
    "effects": (
        "Skip-effect heatmaps: relative change of each later layer's contribution when a layer is skipped "
        "(propagated, and local = direct dependency), rows = models, one colour scale; and the output effect. "
        "Read: the paper (Fig. 5, 7b) finds block-periodic dependencies in grown models (each block's third "
        "layer reading all earlier ones) and later layers that matter more for future tokens."
    ),
    "block-similarity": (
        "Cosine similarity of the concatenated MLP weights of every pair of blocks. Read: the paper "
        "(Fig. 7a) finds near-zero similarity for the baseline, an asymmetric pattern for MIDAS (the "
        "copied block pair) and a pattern symmetric about the centre for LIDAS."
    ),
}


def late_overlap(tuned_lens_result: dict) -> float:
    """Mean top-5 overlap over the second half of the layers, the last layer excluded (its lens
    is the identity, overlap exactly 1): layers [L // 2, L - 1)."""
    ov = tuned_lens_result["top_k_overlap"]
    L = len(ov)
    part = ov[L // 2 : L - 1] or ov[-1:]
    return sum(part) / len(part)


@dataclass
class Cell:
    """One table cell: mean over seeds with its spread (sample SD over seeds), or, with one seed,
    the value with its standard error where the result has one (NaN: none)."""

    value: float
    spread: float
    kind: str  # "sd" (over seeds), "se" (one seed), "" (neither)
    seeds: int

    def text(self, fmt: str) -> str:
        if self.value is None or math.isnan(self.value):
            return "—"
        base = fmt.format(self.value)
        return base if math.isnan(self.spread) else f"{base} ± {fmt.format(self.spread)}"


def _cell(values: list[tuple[float, float]]) -> Cell:
    vals = [v for v, _ in values if v is not None and not math.isnan(v)]
    if not vals:
        return Cell(math.nan, math.nan, "", 0)
    if len(vals) == 1:
        se = values[0][1]
        return Cell(vals[0], math.nan if se is None else se, "se" if se is not None and not math.isnan(se) else "", 1)
    return Cell(statistics.fmean(vals), statistics.stdev(vals), "sd", len(vals))


def _read(path: str) -> dict | None:

    return _none_to_nan(read_json(path)) if os.path.isfile(path) else None


def _none_to_nan(x):
    """`analyze` writes a non-finite number as null (strict JSON); its summaries and plots
    expect NaN back."""
    if isinstance(x, dict):
        return {k: _none_to_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return math.nan if x is None else x


def variant_metrics(cfg: StudyConfig, layout, heldout: str, variant: str, seed: int) -> dict[str, tuple[float, float]]:
    """(value, standard error or NaN) of each table column for one trained model, from its files."""

    nan = math.nan
    out: dict[str, tuple[float, float]] = {k: (nan, nan) for k, *_ in COLUMNS}
    lbl = label(cfg, variant, seed)
    tr = _read(layout.train_json(variant, seed))
    if tr:
        out["flops"] = (float(tr["flops"]), nan)
        out["train_seconds"] = (float(tr["train_step_seconds"]), nan)
    ev = _read(layout.eval_json(variant, seed))
    if ev:
        h = (ev.get("heldout") or {}).get(heldout)
        if h:
            out["nll"] = (h["nll"], h["stderr"] if h.get("windows", 0) > 1 else nan)
        m = ev.get("primitives_mean") or (next(iter(ev["primitives"].values())) if ev.get("primitives") else None)
        if m:
            out["accuracy"] = (m["accuracy"], m["stderr"])
    ds = _read(os.path.join(layout.analysis_dir(variant, seed), ANALYSIS_FILES["depth-score"]))
    if ds and lbl in ds["models"]:
        r = ds["models"][lbl]
        out["depth_score"] = (r["depth_score"], r.get("depth_score_se") if r.get("depth_score_se") is not None else nan)
    tl = _read(os.path.join(layout.analysis_dir(variant, seed), ANALYSIS_FILES["tuned-lens"]))
    if tl and lbl in tl["models"]:
        out["late_overlap"] = (late_overlap(tl["models"][lbl]), nan)
    return out


def loop_rows(cfg: StudyConfig, layout) -> list[dict]:
    """Per seed: the looped variant, its plain row and its best looped row (highest mean accuracy,
    ties: lower NLL) of loop_sweep.json."""

    out = []
    for s in cfg.seeds:
        path = os.path.join(layout.loop_dir(s), "loop_sweep.json")
        marker = layout.marker(_loop_step(s))
        if not (os.path.isfile(path) and os.path.isfile(marker)):
            continue
        res, variant = read_json(path), read_json(marker)["looped_variant"]
        plain = res["rows"][0]
        looped = [r for r in res["rows"] if r["repeats"] > 1]
        best = max(looped, key=lambda r: (r.get("accuracy", 0.0), -r.get("mean_nll", 0.0))) if looped else None
        out.append({"seed": s, "variant": variant, "plain": plain, "best": best, "n": res["n"], "path": path})
    return out


def _loop_step(seed: int) -> Step:
    return Step("loop", None, seed)


def _verdict(name: str, a: Cell, b: Cell, fmt: str) -> str:
    """One line: b vs the reference a, and whether the difference exceeds the noise."""
    d = b.value - a.value
    if a.kind == "sd" or b.kind == "sd":
        spread = max(x for x in (a.spread, b.spread) if not math.isnan(x))
        word = (
            f"smaller than the seed spread (SD {fmt.format(spread)}): not a difference at this budget"
            if abs(d) <= spread
            else f"larger than the seed spread (SD {fmt.format(spread)})"
        )
        return f"{fmt.format(a.value)} vs {fmt.format(b.value)}, diff {d:+.4g}: {word}"
    if a.kind == "se" and b.kind == "se":
        se = math.hypot(a.spread, b.spread)
        word = "within noise (under 2 SE)" if abs(d) <= 2 * se else f"beyond noise ({abs(d) / se:.1f} SE)"
        return f"{fmt.format(a.value)} vs {fmt.format(b.value)}, diff {d:+.4g} ± {se:.2g}: {word}"
    return f"{fmt.format(a.value)} vs {fmt.format(b.value)}, diff {d:+.4g} (no uncertainty estimate; one seed)"


def summary(cfg: StudyConfig, layout, heldout: str) -> dict:
    """The table's cells (and per-model values) as plain data (written to summary.json)."""
    rows = {}
    for v in cfg.variants:
        per_seed = {s: variant_metrics(cfg, layout, heldout, v.name, s) for s in cfg.seeds}
        rows[v.name] = {
            "per_seed": {str(s): {k: _nan_to_none(list(val)) for k, val in m.items()} for s, m in per_seed.items()},
            "cells": {k: _nan_to_none(_cell([per_seed[s][k] for s in cfg.seeds]).__dict__) for k, *_ in COLUMNS},
        }
    return {"columns": [k for k, *_ in COLUMNS], "variants": rows, "loop": loop_rows(cfg, layout)}


def _figures(cfg: StudyConfig, layout, block_size: int | None) -> dict[str, tuple[list[str], dict]]:
    """analysis -> (figure paths, merged results {label: result}) for every analysis all of whose
    models have results."""
    from grow_megatron.analysis.plots import plot_any

    fig_dir = os.path.join(cfg.out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    out = {}
    for name in cfg.analysis.analyses:
        merged: dict[str, dict] = {}
        for s in cfg.seeds:
            for v in cfg.variants:
                res = _read(os.path.join(layout.analysis_dir(v.name, s), ANALYSIS_FILES[name]))
                lbl = label(cfg, v.name, s)
                if res and lbl in res["models"]:
                    merged[lbl] = res["models"][lbl]
        if merged:
            out[name] = (plot_any(name, merged, fig_dir, block_size), merged)
    return out


def _eval_notes(cfg: StudyConfig, layout: StudyLayout) -> list[str]:
    """Chance level of the primitives accuracy and, if any, prompts cut to the context (then the
    accuracies are not 5-shot numbers)."""
    chance, cut = None, []
    for s in cfg.seeds:
        for v in cfg.variants:
            ev = _read(layout.eval_json(v.name, s))
            if not ev:
                continue
            m = ev.get("primitives_mean") or next(iter((ev.get("primitives") or {}).values()), None)
            chance = m["chance"] if m else chance
            if ev.get("truncated_prompts"):
                cut.append(f"{label(cfg, v.name, s)} {ev['truncated_prompts']}")
    out = []
    if chance is not None:
        out.append(f"Chance level of the primitives accuracy: {chance:.3f} (guessing uniformly among the choices).")
    out.append(
        "Prompts cut to the model's context (accuracies then not 5-shot): " + (", ".join(cut) if cut else "none") + "."
    )
    return out + [""]


def _machine() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'})"


def write_report(cfg: StudyConfig, layout: StudyLayout, runner) -> str:
    """Write OUT_DIR/report.md, summary.json and figures/; return the report's path. `runner`
    gives the held-out file, the variants' run configs, the base config path and the block size."""
    from grow_megatron.analysis.report import ORDER, TITLES, table

    heldout = runner.heldout
    data = summary(cfg, layout, heldout)
    write_json(os.path.join(cfg.out_dir, "summary.json"), data)
    figs = _figures(cfg, layout, runner.block_size())
    rel = lambda p: os.path.relpath(p, cfg.out_dir)  # noqa: E731
    n_seeds = len(cfg.seeds)
    L = [
        f"# Study: {cfg.name}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `grow-megatron study` on {_machine()}."
        + (f" Command: `{runner.command_line}` (in {os.getcwd()})." if getattr(runner, "command_line", None) else ""),
        "",
        "| variant | run config overrides |",
        "|---|---|",
    ]
    L += [
        f"| {v.name} | {f'`{v.config}` ' if v.config else ''}{', '.join(f'`{o}`' for o in [*cfg.base_set, *v.set]) or '(base)'} |"
        for v in cfg.variants
    ]
    some = next(iter(runner.configs.values()))
    L += [
        "",
        f"Base run config: `{runner.base_path}`; every variant trains {some.train.steps} steps x "
        f"{some.train.global_batch_size} sequences x {some.model.seq_length} tokens, seeds {cfg.seeds}. "
        f"Held-out text: `{heldout}`. Evaluation: tasks `{cfg.eval.tasks}`, n = {cfg.eval.n} per task, seed "
        f"{cfg.eval.seed}; analyses on `{cfg.analysis.tasks}` (n = {cfg.analysis.n}).",
        "",
    ]
    L += ["## Summary", ""]
    spread_note = (
        "mean ± sample SD over the seeds"
        if n_seeds > 1
        else "one seed: ± is the standard error where the number has one (binomial for the accuracy, over "
        "windows for the NLL, bootstrap for the depth score)"
    )
    L += [
        f"Cells: {spread_note}. NLL: `eval.json` held-out; primitives acc: mean accuracy over the tasks; depth score: "
        "`analysis/depth_score.json`; late top-5 overlap: `analysis/tuned_lens.json`, mean over layers "
        "[L/2, L-1) (the last layer's lens is the identity); train FLOPs: docs/method.md §6, cumulative in the run's "
        f"{METRICS} (`train.json`); train time: seconds spent in training steps (sum of step_s).",
        "",
    ]
    L += ["| variant | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    cells = {v: {k: _cell_from(data["variants"][v]["cells"][k]) for k, *_ in COLUMNS} for v in data["variants"]}
    for v in data["variants"]:
        L.append(f"| {v} | " + " | ".join(cells[v][k].text(f) for k, _, f in COLUMNS) + " |")
    for lp in data["loop"]:
        b = lp["best"]
        if b is None:
            continue
        acc = f"{b['accuracy']:.3f}" if "accuracy" in b else "—"
        nll = f"{b['mean_nll']:.4f}" if "mean_nll" in b else "—"
        L.append(f"| {lp['variant']} looped {b['loop']} (seed {lp['seed']}) | {nll} | {acc} | — | — | — | — |")
    L.append("")
    L += _eval_notes(cfg, layout)
    ref = cfg.variants[0].name
    lines = []
    for v in list(data["variants"])[1:]:
        for k, h, f in COLUMNS[:4]:
            a, b = cells[ref][k], cells[v][k]
            if not (math.isnan(a.value) or math.isnan(b.value)):
                lines.append(f"- {h}, {ref} vs {v}: {_verdict(k, a, b, f)}")
    if lines:
        L += [f"Each variant against {ref} (the first variant):", "", *lines, ""]
    if data["loop"]:
        L += ["## Inference-time looping", ""]
        for lp in data["loop"]:
            p, b = lp["plain"], lp["best"]
            if b is None:
                continue
            L.append(
                f"- seed {lp['seed']}: {lp['variant']} plain: acc {p.get('accuracy', math.nan):.3f}, NLL "
                f"{p.get('mean_nll', math.nan):.4f}; best looped ({b['loop']}, depth {b['unrolled_depth']}): acc "
                f"{b.get('accuracy', math.nan):.3f}, NLL {b.get('mean_nll', math.nan):.4f}. The best row is "
                f"chosen on the same {lp['n']} examples per task it is scored on, so it is an optimistic pick. "
                f"All rows: [{rel(lp['path'])}]({rel(lp['path'])})."
            )
            png = os.path.join(os.path.dirname(lp["path"]), "loop_sweep.png")
            if os.path.isfile(png):
                L += [
                    "",
                    f"![loop sweep seed {lp['seed']}]({rel(png)})",
                    "",
                    "*Mean primitive accuracy and held-out NLL for each looped block (rows) and repeat count "
                    "(columns; 1 = the plain model). Read: does applying a block again help (sequel: up to 2x on "
                    "some primitives for a grown model at 360M+)?*",
                ]
        L.append("")
    cmp_png = os.path.join(cfg.out_dir, "compare_runs", "compare_runs.png")
    if os.path.isfile(cmp_png):
        L += [
            "## Training",
            "",
            f"![loss vs steps, tokens, FLOPs]({rel(cmp_png)})",
            "",
            "*Training and held-out loss against steps, tokens and training FLOPs (dotted: growths). Read: the "
            "grown runs spend fewer FLOPs for the same tokens (docs/method.md §6); compare losses at equal FLOPs in "
            f"[loss_at_flops.md]({rel(os.path.join(cfg.out_dir, 'compare_runs', 'loss_at_flops.md'))}).*",
            "",
        ]
    L += [
        "## Depth analyses",
        "",
        "Figures: every model on shared axes, drawn by `grow_megatron.analysis.plots` from the per-variant "
        "`analysis/*.json`. Tables: the headline numbers of `analyze compare` per model, each compared with "
        "the first model (± one standard error; *within noise* = under two standard errors of the difference).",
        "",
    ]
    for name in ORDER:
        if name not in figs:
            continue
        paths, merged = figs[name]
        L += [f"### {TITLES[name]}", ""]
        L += table(name, merged)
        for p in paths:
            L += [f"![{name}]({rel(p)})", ""]
        L += [f"*{CAPTIONS[name]}*", ""]
    L += ["## Steps", "", "| step | wall (s) | CPU (s) | finished |", "|---|---|---|---|"]
    total, cpu = 0.0, 0.0
    for step in plan(cfg):
        m = layout.marker(step)
        if os.path.isfile(m):
            mk = read_json(m)
            total += mk["seconds"]
            cpu += mk.get("cpu_seconds", math.nan)
            L.append(
                f"| {step.title()} | {mk['seconds']:.0f} | {mk.get('cpu_seconds', math.nan):.0f} | {mk['finished']} |"
            )
        else:
            L.append(f"| {step.title()} | not done | | |")
    L += [
        "",
        f"Total: {total / 60:.1f} min wall-clock in steps (process starts included), {cpu / 60:.1f} CPU-minutes "
        f"(user + system of the commands; on a machine shared with other jobs the wall time is inflated, the "
        f"CPU time is not: on {os.cpu_count()} idle cores the steps need at least {cpu / 60 / (os.cpu_count() or 1):.1f} "
        "min).",
        "",
    ]
    path = os.path.join(cfg.out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path


def _nan_to_none(x):
    """summary.json is strict JSON: a missing number is null, not NaN."""
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _cell_from(d: dict) -> Cell:
    return Cell(**{k: math.nan if v is None else v for k, v in d.items()})
