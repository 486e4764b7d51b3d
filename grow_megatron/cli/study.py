"""`grow-megatron study STUDY.yaml [--set field=value ...]`.

Trains every variant of a study (a base run config plus a few overrides each: static, MIDAS,
LIDAS, LN-Scaling, ...) at equal tokens, per seed; exports, evaluates and analyses each; loops
the best grown variant at inference; writes OUT_DIR/report.md. Running it again skips every
step that finished (done-markers) and resumes an interrupted training run from its newest
checkpoint. See docs/study.md.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.study.config import load_study
from grow_megatron.study.runner import StudyError, run_study


@dataclass
class StudyOptions:
    """Options of `grow-megatron study`."""

    study: str = field(metadata=cli(positional=True))
    """study YAML (see examples/study_*.yaml)"""
    overrides: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True, metavar="KEY=VALUE"))
    """override a study field, e.g. --set out_dir=studies/x or --set seeds=[0,1] (repeatable)"""
    verbose: bool = False
    """also print every command's output (always in its log)"""


def main(argv: list[str]) -> int:
    opts = options_from_args(
        StudyOptions, command_parser("grow-megatron study", __doc__, StudyOptions).parse_args(argv)
    )
    cfg, base = load_study(opts.study, opts.overrides)
    try:
        run_study(cfg, base, verbose=opts.verbose, command=shlex.join(["grow-megatron", "study", *argv]))
    except StudyError as err:
        print(f"grow-megatron study: {err}", file=sys.stderr)
        return 1
    return 0
