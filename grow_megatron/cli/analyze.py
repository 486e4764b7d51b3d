"""`grow-megatron analyze ...`: run one depth analysis (or all, as a comparison report).

  grow-megatron analyze <analysis> MODEL... --out DIR [options]
  grow-megatron analyze compare MODEL... --out DIR [--data FILE] [--tasks FILE] [--set a.field=v]

Each analysis writes DIR/<analysis>.json ({"analysis", "config", "models": {label: result}})
and its figure(s) with all given models overlaid. Options of an analysis are the fields of
its config dataclass (see `--help` of each).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from grow_megatron.analysis.report import compare
from grow_megatron.analysis.run import AnalyzeOptions, run_on_models, write_analysis
from grow_megatron.analysis.suite import CONFIGS, QUICK, InputError
from grow_megatron.cli.flags import add_flags, cli, given, options_from_args
from grow_megatron.config.base import ConfigError, UserError

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


@dataclass
class CompareOptions(AnalyzeOptions):
    """`analyze compare`: the common options, which analyses, and their config overrides."""

    analyses: list[str] | None = field(default=None, metadata=cli(choices=ANALYSES))
    """which analyses (default: every one the given inputs allow)"""
    overrides: list[str] = field(
        default_factory=list, metadata=cli(flag="--set", append=True, metavar="ANALYSIS.FIELD=VALUE")
    )
    """config override, e.g. --set depth-score.max_sequences=32 (repeatable)"""


@dataclass
class TunedLensOptions(AnalyzeOptions):
    """`analyze tuned-lens`: the common options and saved lenses."""

    lens: list[str] | None = None
    """saved lenses (one per model) to evaluate instead of training"""

    def validate(self) -> None:
        super().validate()
        if self.lens and len(self.lens) != len(self.models):
            raise ConfigError("--lens", self.lens, f"needs one lens per model ({len(self.models)})")


def options_class(name: str) -> type[AnalyzeOptions]:
    """The options dataclass of analysis `name` (besides its config dataclass, CONFIGS[name])."""
    return {"compare": CompareOptions, "tuned-lens": TunedLensOptions}.get(name, AnalyzeOptions)


def build_parser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"grow-megatron analyze {name}", description=DESCRIPTIONS[name])
    add_flags(p, options_class(name))
    if name != "compare":
        # Flags default to None: only what was given is laid over the --quick preset.
        add_flags(p, CONFIGS[name], only_given=True)
    return p


def _overrides(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        name, dot, fld = key.partition(".")
        if not (eq and dot and name in ANALYSES):
            raise ConfigError("--set", item, f"must be ANALYSIS.FIELD=VALUE with ANALYSIS one of {', '.join(ANALYSES)}")
        out.setdefault(name, {})[fld] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    # The user's to fix (bad option, missing input or model): one line, no traceback; also
    # when run as tools/analyze.py, without the dispatcher.
    except (UserError, InputError, FileNotFoundError, NotImplementedError) as err:
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
        print(
            f"grow-megatron analyze: unknown analysis {name!r}; choose one of: {', '.join(DESCRIPTIONS)}",
            file=sys.stderr,
        )
        return 2
    args = build_parser(name).parse_args(rest)
    opts: Any = options_from_args(options_class(name), args)
    os.makedirs(opts.out, exist_ok=True)
    if name == "compare":
        print(compare(opts, opts.analyses, _overrides(opts.overrides)))
        return 0
    preset = dict(QUICK.get(name, {})) if opts.quick else {}
    cfg = options_from_args(CONFIGS[name], preset | given(CONFIGS[name], args), path=name)
    results = run_on_models([name], opts, {name: cfg}, getattr(opts, "lens", None))
    for p in write_analysis(name, cfg, results[name], opts.out, opts.mark_blocks):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
