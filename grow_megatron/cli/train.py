"""`grow-megatron train CONFIG.yaml [--set section.field=value ...]`.

Trains (or grows) the model the run config describes; outputs go to its run_dir. Running the
same command again resumes from the newest checkpoint there (checkpoint.resume: auto). Ctrl-C
stops after the current step and checkpoints; a second Ctrl-C aborts at once.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="grow-megatron train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="run config YAML (see examples/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--run-dir", help="shorthand for --set run_dir=DIR")
    args = p.parse_args(argv)
    if args.run_dir:
        args.overrides.append(f"run_dir={args.run_dir}")

    from grow_megatron.config.run import load_run_config
    from grow_megatron.engine.distributed import shutdown_distributed, world_size_from_env
    from grow_megatron.training.loop import train

    cfg = load_run_config(args.config, args.overrides, world_size=world_size_from_env())
    try:
        res = train(cfg)
    except FloatingPointError as err:  # diverged: the message says what to change
        print(f"grow-megatron train: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if os.environ.get("RANK", "0") != "0":
        return 0
    if not res.losses:
        # Re-running a finished run resumes at its last step and trains nothing: say so, or
        # the user is left with an empty progress bar and no idea why.
        print(f"nothing to do: {cfg.run_dir} is already trained to step {res.end_step} (train.steps = "
              f"{cfg.train.steps}); raise train.steps to continue (the LR then follows optim.on_extend, default "
              f"continue), or give another --run-dir for a new run")
        return 0
    print(final_line(res, cfg.train.steps, cfg.run_dir))
    return 0


def final_line(res, total: int, run_dir: str) -> str:
    """The last line of a run: the steps this command ran, depth, last training and held-out loss."""
    last = res.losses[max(res.losses)]
    held_out = ""
    if res.eval_losses:
        step = max(res.eval_losses)
        held_out = f", held-out loss {res.eval_losses[step]:.4f} (step {step + 1})"
    ran = f"ran steps {res.start_step}..{res.end_step}"
    if res.end_step < total:
        return (f"stopped: {ran} of {total} (checkpointed), depth {res.final_depth}, last loss {last:.4f}{held_out}; "
                f"run the same command again to resume")
    return f"done: {ran}, final depth {res.final_depth}, last loss {last:.4f}{held_out}; outputs in {run_dir}"
