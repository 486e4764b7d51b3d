"""Running analyses over several models: the options every analysis shares, the models loaded one
at a time, the results written as DIR/<analysis>.json with their figures."""

from __future__ import annotations

import gc
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from grow_megatron.analysis.data import load_tasks
from grow_megatron.analysis.plots import plot_any
from grow_megatron.analysis.suite import QUICK_N, Inputs, run_analysis
from grow_megatron.config.base import ConfigError, to_dict
from grow_megatron.config.loop import check_loop_arg
from grow_megatron.config.options import cli
from grow_megatron.convert.load import check_model_dir, load_model
from grow_megatron.convert.looping import apply_loop_arg
from grow_megatron.eval.scoring import context_length


@dataclass
class AnalyzeOptions:
    """What every analysis reads: the models, the inputs, where the results go."""

    models: list[str] = field(metadata=cli(positional=True, nargs="+", metavar="MODEL"))
    """Hugging Face Llama model directories"""
    out: str
    """output directory for JSON, figures (and lenses)"""
    labels: list[str] | None = None
    """legend labels, one per model (default: directory names)"""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the models are loaded in"""
    data: str | None = None
    """held-out text (.txt, .jsonl with 'text') or token ids (.npy/.pt)"""
    tasks: str | None = None
    """multiple-choice task: JSONL of {prompt, choices, answer, task}, or reasoning primitive names as for
    `grow-megatron eval --tasks` (e.g. varassign_math, paper)"""
    n: int | None = None
    """examples per primitive task (with task names; default 200, 50 with --quick)"""
    seed: int = 0
    """seed of the primitive tasks (with task names)"""
    add_bos: bool = False
    """prepend BOS to task prompts (as `grow-megatron eval`)"""
    mark_blocks: int | None = field(default=None, metadata=cli(metavar="B"))
    """mark every B-th layer in line plots (default: the config's block_size, if any)"""
    quiet: bool = False
    """no progress bars (and no cost estimate)"""
    quick: bool = False
    """cheaper settings for a first look (fewer examples, sequences, lens steps and intervention sizes; see
    docs/analysis.md); explicit options override them"""
    loop: str | None = field(default=None, metadata=cli(metavar="SPEC"))
    """loop a block at inference: START:ENDxR applies layers START..END-1 (0-indexed) R times in a row with the
    same weights, e.g. 12:16x3 (docs/looping.md); applied to every MODEL"""

    def validate(self) -> None:
        if self.labels and len(self.labels) != len(self.models):
            raise ConfigError("--labels", self.labels, f"needs one label per model ({len(self.models)})")
        check_loop_arg(self.loop)


def model_labels(opts: AnalyzeOptions) -> list[str]:
    """One legend label per model: --labels, else the directory names (numbered when two are equal)."""
    labels = opts.labels or [os.path.basename(os.path.normpath(m)) for m in opts.models]
    if len(set(labels)) != len(labels):  # same directory names in different runs
        labels = [f"{i}:{lbl}" for i, lbl in enumerate(labels)]
    return labels


def json_safe(x: Any) -> Any:
    """`x` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def run_on_models(
    names: list[str], opts: AnalyzeOptions, cfgs: dict[str, Any], lens_paths: list[str] | None = None
) -> dict[str, dict[str, dict]]:
    """analysis -> label -> result. Models are loaded one at a time and freed after use."""
    for path in opts.models:  # every model's type, before the first one is loaded
        check_model_dir(path, "llama")
    n = opts.n if opts.n is not None else (QUICK_N if opts.quick else 200)
    tasks = load_tasks(opts.tasks, n, opts.seed) if opts.tasks else []
    results: dict[str, dict[str, dict]] = {name: {} for name in names}
    for i, (path, label) in enumerate(zip(opts.models, model_labels(opts))):
        loaded = load_model(path, opts.device, opts.dtype, name=label)
        if opts.loop:
            apply_loop_arg(loaded.model, opts.loop)
        if tasks and not opts.quiet:
            warn_over_context(tasks, loaded, label)
        inputs = Inputs(
            data_path=opts.data, tasks=tasks, lens_path=lens_paths[i] if lens_paths else None, add_bos=opts.add_bos
        )
        for name in names:
            if not opts.quiet:
                print(f"[analyze] {name} on {label}", file=sys.stderr)
            results[name][label] = run_analysis(
                name, loaded, cfgs[name], inputs, out_dir=opts.out, progress=not opts.quiet
            )
        del loaded
        gc.collect()
    return results


def warn_over_context(tasks: list, loaded: Any, label: str) -> int:
    """Warn (one line) when task prompts are longer than the model's context: the positions
    past it were never trained, so the task numbers then measure extrapolation, not the model
    (eval cuts such prompts and says so; the analyses keep them whole). Returns the count."""
    ctx = context_length(loaded.model)
    if ctx is None or loaded.tokenizer is None:
        return 0
    lengths = [len(loaded.tokenizer(ex.prompt + max(ex.choices, key=len))["input_ids"]) for ex in tasks]
    over = sum(n > ctx for n in lengths)
    if over:
        print(
            f"WARNING: {over} of {len(tasks)} task prompts of {label} are longer than its context of {ctx} tokens "
            f"(longest {max(lengths)}): positions past {ctx} were never trained, so the task numbers measure "
            f"extrapolation. Fix: a model trained with a longer model.seq_length, or shorter tasks "
            f"(a JSONL task file).",
            file=sys.stderr,
        )
    return over


def write_analysis(name: str, cfg: Any, results: dict[str, dict], out_dir: str, mark_blocks: int | None) -> list[str]:
    """DIR/<name>.json and the analysis' figures; returns the written paths."""
    block = mark_blocks if mark_blocks is not None else getattr(cfg, "block_size", None)
    figs = plot_any(name, results, out_dir, block)
    path = os.path.join(out_dir, f"{name.replace('-', '_')}.json")
    with open(path, "w") as f:
        json.dump(
            json_safe(
                {
                    "analysis": name,
                    "config": to_dict(cfg),
                    "models": results,
                    "figures": [os.path.basename(p) for p in figs],
                }
            ),
            f,
            indent=1,
        )
    return [path, *figs]
