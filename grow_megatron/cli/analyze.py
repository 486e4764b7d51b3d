"""`grow-megatron analyze ...`: run one depth analysis (or all, as a comparison report).

  grow-megatron analyze <analysis> MODEL... --out DIR [options]
  grow-megatron analyze compare MODEL... --out DIR [--data FILE] [--tasks FILE] [--set a.field=v]

Each analysis writes DIR/<analysis>.json ({"analysis", "config", "models": {label: result}})
and its figure(s) with all given models overlaid. Options of an analysis are the fields of
its config dataclass (see `--help` of each).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import typing
from typing import Any, Literal, get_args, get_origin

from grow_megatron.config.base import ConfigError, field_docs, from_dict, to_dict
from grow_megatron.config.loop import LOOP_HELP, check_loop_arg

ANALYSES = ("tuned-lens", "depth-score", "effects", "interventions", "sublayer", "block-similarity")
DESCRIPTIONS = {
    "tuned-lens": "train/evaluate a tuned lens: per-layer KL, top-5 overlap, early-exit accuracy (--tasks)",
    "depth-score": "logit-effect depth score (future output effect of skipping each layer)",
    "effects": "skip-effect heatmaps: layer/attn/MLP, current/future, propagated/local",
    "interventions": "task accuracy after swapping / skipping / reversing consecutive layers",
    "sublayer": "relative contribution and cosine of attention and MLP outputs to the residual",
    "block-similarity": "cosine similarity of concatenated MLP weights between blocks",
    "compare": "run the analyses on several models and write one markdown report with figures",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="Hugging Face Llama model directories")
    p.add_argument("--out", required=True, help="output directory for JSON, figures (and lenses)")
    p.add_argument("--labels", nargs="+", help="legend labels, one per model (default: directory names)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--data", help="held-out text (.txt, .jsonl with 'text') or token ids (.npy/.pt)")
    p.add_argument("--tasks", help="multiple-choice task: JSONL of {prompt, choices, answer, task}, or reasoning "
                                   "primitive names as for `grow-megatron eval --tasks` (e.g. varassign_math, paper)")
    p.add_argument("--n", type=int, default=None, help="examples per primitive task (with task names; default 200, "
                                                       "50 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the primitive tasks (with task names)")
    p.add_argument("--add-bos", action="store_true", help="prepend BOS to task prompts (as `grow-megatron eval`)")
    p.add_argument("--mark-blocks", type=int, default=None, metavar="B",
                   help="mark every B-th layer in line plots (default: the config's block_size, if any)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (and no cost estimate)")
    p.add_argument("--quick", action="store_true",
                   help="cheaper settings for a first look (fewer examples, sequences, lens steps and "
                        "intervention sizes; see docs/analysis.md); explicit options override them")
    p.add_argument("--loop", metavar="SPEC", help=LOOP_HELP + "; applied to every MODEL")


def _add_config_options(p: argparse.ArgumentParser, cls: type) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_ = f"{docs.get(f.name, '')} (default: {default})"
        if tp is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif get_origin(tp) is Literal:
            p.add_argument(flag, dest=f.name, choices=get_args(tp), default=None, help=help_)
        elif get_origin(tp) in (list, tuple):
            (item,) = get_args(tp)[:1] or (str,)
            p.add_argument(flag, dest=f.name, nargs="*", type=item, default=None, help=help_)
        else:
            p.add_argument(flag, dest=f.name, type=tp if tp in (int, float, str) else str, default=None, help=help_)


def build_parser(name: str) -> argparse.ArgumentParser:
    from grow_megatron.analysis.suite import CONFIGS

    p = argparse.ArgumentParser(prog=f"grow-megatron analyze {name}", description=DESCRIPTIONS[name])
    _common(p)
    if name == "compare":
        p.add_argument("--analyses", nargs="+", choices=ANALYSES,
                       help="which analyses (default: every one the given inputs allow)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="ANALYSIS.FIELD=VALUE",
                       help="config override, e.g. --set depth-score.max_sequences=32 (repeatable)")
    else:
        _add_config_options(p, CONFIGS[name])
        if name == "tuned-lens":
            p.add_argument("--lens", nargs="+", help="saved lenses (one per model) to evaluate instead of training")
    return p


def _config_from_args(name: str, args: argparse.Namespace) -> Any:
    from grow_megatron.analysis.suite import CONFIGS

    from grow_megatron.analysis.suite import QUICK

    cls = CONFIGS[name]
    given = dict(QUICK.get(name, {})) if args.quick else {}
    given.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None})
    cfg = from_dict(cls, given, name)
    cfg.validate(name)
    return cfg


def _overrides(items: list[str]) -> dict[str, dict]:
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        name, dot, fld = key.partition(".")
        if not (eq and dot and name in ANALYSES):
            raise ConfigError("--set", item, f"must be ANALYSIS.FIELD=VALUE with ANALYSIS one of {', '.join(ANALYSES)}")
        out.setdefault(name, {})[fld] = yaml.safe_load(value)
    return out


def _labels(args: argparse.Namespace) -> list[str]:
    if args.labels and len(args.labels) != len(args.models):
        raise ConfigError("--labels", args.labels, f"needs one label per model ({len(args.models)})")
    labels = args.labels or [os.path.basename(os.path.normpath(m)) for m in args.models]
    if len(set(labels)) != len(labels):  # same directory names in different runs
        labels = [f"{i}:{lbl}" for i, lbl in enumerate(labels)]
    return labels


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run_on_models(names: list[str], args: argparse.Namespace, cfgs: dict[str, Any],
                  lens_paths: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """analysis -> label -> result. Models are loaded one at a time and freed after use."""
    from grow_megatron.analysis.data import load_tasks
    from grow_megatron.convert.load import check_model_dir, load_model
    from grow_megatron.analysis.suite import QUICK_N, Inputs, run_analysis

    for path in args.models:  # every model's type, before the first one is loaded
        check_model_dir(path, "llama")
    n = args.n if args.n is not None else (QUICK_N if args.quick else 200)
    tasks = load_tasks(args.tasks, n, args.seed) if args.tasks else []
    results: dict[str, dict[str, dict]] = {n: {} for n in names}
    for i, (path, label) in enumerate(zip(args.models, _labels(args))):
        loaded = load_model(path, args.device, args.dtype, name=label)
        if args.loop:
            from grow_megatron.convert.looping import apply_loop_arg

            apply_loop_arg(loaded.model, args.loop)
        if tasks and not args.quiet:
            warn_over_context(tasks, loaded, label)
        inputs = Inputs(data_path=args.data, tasks=tasks, lens_path=lens_paths[i] if lens_paths else None,
                        add_bos=args.add_bos)
        for n in names:
            if not args.quiet:
                print(f"[analyze] {n} on {label}", file=sys.stderr)
            results[n][label] = run_analysis(n, loaded, cfgs[n], inputs, out_dir=args.out, progress=not args.quiet)
        del loaded
        gc.collect()
    return results


def warn_over_context(tasks: list, loaded: Any, label: str) -> int:
    """Warn (one line) when task prompts are longer than the model's context: the positions
    past it were never trained, so the task numbers then measure extrapolation, not the model
    (eval cuts such prompts and says so; the analyses keep them whole). Returns the count."""
    from grow_megatron.eval.scoring import context_length

    ctx = context_length(loaded.model)
    if ctx is None or loaded.tokenizer is None:
        return 0
    lengths = [len(loaded.tokenizer(ex.prompt + max(ex.choices, key=len))["input_ids"]) for ex in tasks]
    over = sum(n > ctx for n in lengths)
    if over:
        print(f"WARNING: {over} of {len(tasks)} task prompts of {label} are longer than its context of {ctx} tokens "
              f"(longest {max(lengths)}): positions past {ctx} were never trained, so the task numbers measure "
              f"extrapolation. Fix: a model trained with a longer model.seq_length, or shorter tasks "
              f"(a JSONL task file).", file=sys.stderr)
    return over


def write_analysis(name: str, cfg: Any, results: dict[str, dict], out_dir: str, mark_blocks: int | None) -> list[str]:
    """DIR/<name>.json and the analysis' figures; returns the written paths."""
    from grow_megatron.analysis.plots import plot_any

    block = mark_blocks if mark_blocks is not None else getattr(cfg, "block_size", None)
    figs = plot_any(name, results, out_dir, block)
    path = os.path.join(out_dir, f"{name.replace('-', '_')}.json")
    with open(path, "w") as f:
        json.dump(_json_safe({"analysis": name, "config": to_dict(cfg), "models": results,
                              "figures": [os.path.basename(p) for p in figs]}), f, indent=1)
    return [path, *figs]


def main(argv: list[str] | None = None) -> int:
    from grow_megatron.analysis.suite import InputError

    try:
        return _main(argv)
    # The user's to fix (bad option, missing input or model): one line, no traceback; also
    # when run as tools/analyze.py, without the dispatcher.
    except (ConfigError, InputError, FileNotFoundError, NotImplementedError) as err:
        print(f"grow-megatron analyze: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: grow-megatron analyze <analysis> MODEL... --out DIR [options]\n\nanalyses:")
        for n, d in DESCRIPTIONS.items():
            print(f"  {n:<17} {d}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in DESCRIPTIONS:
        print(f"grow-megatron analyze: unknown analysis {name!r}; choose one of: {', '.join(DESCRIPTIONS)}",
              file=sys.stderr)
        return 2
    args = build_parser(name).parse_args(rest)
    check_loop_arg(args.loop)
    os.makedirs(args.out, exist_ok=True)
    if name == "compare":
        from grow_megatron.analysis.report import compare

        print(compare(args, _overrides(args.overrides)))
        return 0
    cfg = _config_from_args(name, args)
    lens = getattr(args, "lens", None)
    if lens and len(lens) != len(args.models):
        raise ConfigError("--lens", lens, f"needs one lens per model ({len(args.models)})")
    results = run_on_models([name], args, {name: cfg}, lens)
    for p in write_analysis(name, cfg, results[name], args.out, args.mark_blocks):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
