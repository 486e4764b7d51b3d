"""`grow-megatron study STUDY.yaml [--set field=value ...]`.

Trains every variant of a study (a base run config plus a few overrides each: static, MIDAS,
LIDAS, LN-Scaling, ...) at equal tokens, per seed; exports, evaluates and analyses each; loops
the best grown variant at inference; writes OUT_DIR/report.md. Running it again skips every
step that finished (done-markers) and resumes an interrupted training run from its newest
checkpoint. See docs/study.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="grow-megatron study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study YAML (see examples/study_*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study field, e.g. --set out_dir=studies/x or --set seeds=[0,1] (repeatable)")
    p.add_argument("--verbose", action="store_true", help="also print every command's output (always in its log)")
    args = p.parse_args(argv)

    from grow_megatron.study.config import load_study
    from grow_megatron.study.runner import StudyError, run_study

    cfg, base = load_study(args.study, args.overrides)
    try:
        run_study(cfg, base, verbose=args.verbose, command=shlex.join(["grow-megatron", "study", *argv]))
    except StudyError as err:
        print(f"grow-megatron study: {err}", file=sys.stderr)
        return 1
    return 0
