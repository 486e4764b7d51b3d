"""`grow-megatron compare-runs RUN [RUN...] [--out DIR]`: runs side by side at equal compute.

Overlays training and held-out loss against steps, tokens and training FLOPs (docs/method.md §6, the
cumulative counts every metrics.jsonl record carries), growth events marked, and tabulates
the losses at common FLOP budgets: each run's loss linearly interpolated at the budget
between the two logged steps around it (held-out loss between the two evaluations around
it; empty outside the evaluated range). The paper's central comparison, grown vs static at
equal compute, is that table.

Writes DIR/compare_runs.png, DIR/loss_at_flops.md and DIR/loss_at_flops.json; prints the table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.config.base import check_output_dir
from grow_megatron.config.options import check_positive
from grow_megatron.training.compare_runs import default_budgets, load_run, run_names, write_comparison


@dataclass
class CompareRunsOptions:
    """Options of `grow-megatron compare-runs`."""

    runs: list[str] = field(metadata=cli(positional=True, nargs="+", metavar="RUN"))
    """run directories (each with metrics.jsonl)"""
    out: str = "compare_runs"
    """output directory (default ./compare_runs)"""
    budgets: int = 5
    """number of FLOP budgets, evenly spaced up to the smallest run's total (default 5)"""
    at: list[float] | None = field(default=None, metadata=cli(metavar="FLOPS"))
    """explicit FLOP budgets instead"""

    def validate(self) -> None:
        check_positive(self, "budgets")


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron compare-runs", __doc__, CompareRunsOptions)


def main(argv: list[str]) -> int:
    opts = options_from_args(CompareRunsOptions, build_parser().parse_args(argv))
    check_output_dir(opts.out, "--out")
    runs = [load_run(r, n) for r, n in zip(opts.runs, run_names(opts.runs))]
    budgets = sorted(opts.at) if opts.at else default_budgets(runs, opts.budgets)
    md, (png, md_path, json_path) = write_comparison(runs, budgets, opts.out)
    print(md)
    print(f"\nwrote {png}, {md_path}, {json_path}")
    return 0
