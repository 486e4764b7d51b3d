"""`grow-megatron train CONFIG.yaml [--set section.field=value ...]`."""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="grow-megatron train", description=__doc__)
    p.add_argument("config", help="run config YAML (see examples/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--run-dir", help="shorthand for --set run_dir=DIR")
    args = p.parse_args(argv)
    if args.run_dir:
        args.overrides.append(f"run_dir={args.run_dir}")

    from grow_megatron.config.run import load_run_config
    from grow_megatron.training.distributed import shutdown_distributed, world_size_from_env
    from grow_megatron.training.loop import train

    cfg = load_run_config(args.config, args.overrides, world_size=world_size_from_env())
    try:
        res = train(cfg)
    except FloatingPointError as err:  # diverged: the message says what to change
        print(f"grow-megatron train: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if res.losses and os.environ.get("RANK", "0") == "0":
        last = res.losses[max(res.losses)]
        print(f"done: steps {res.start_step}..{res.end_step}, final depth {res.final_depth}, last loss {last:.4f}; "
              f"outputs in {cfg.run_dir}")
    return 0
