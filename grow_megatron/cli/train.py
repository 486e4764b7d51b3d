"""`grow-megatron train CONFIG.yaml [--set section.field=value ...]`.

Trains (or grows) the model the run config describes; outputs go to its run_dir. Running the
same command again resumes from the newest checkpoint there (checkpoint.resume: auto). Ctrl-C
stops after the current step and checkpoints; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.config.run import load_run_config


@dataclass
class TrainOptions:
    """Options of `grow-megatron train`."""

    config: str = field(metadata=cli(positional=True))
    """run config YAML (see examples/)"""
    overrides: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True, metavar="KEY=VALUE"))
    """override a config field, e.g. --set train.steps=50 (repeatable)"""
    run_dir: str | None = None
    """shorthand for --set run_dir=DIR"""


def main(argv: list[str]) -> int:
    p = command_parser("grow-megatron train", __doc__, TrainOptions)
    opts = options_from_args(TrainOptions, p.parse_args(argv))
    if opts.run_dir:
        opts.overrides.append(f"run_dir={opts.run_dir}")

    # megatron-core (ten seconds): not for --help or a mistyped flag.
    from grow_megatron.engine.distributed import shutdown_distributed, world_size_from_env
    from grow_megatron.training.loop import train

    cfg = load_run_config(opts.config, opts.overrides, world_size=world_size_from_env())
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
        print(
            f"nothing to do: {cfg.run_dir} is already trained to step {res.end_step} (train.steps = "
            f"{cfg.train.steps}); raise train.steps to continue (the LR then follows optim.on_extend, default "
            f"continue), or give another --run-dir for a new run"
        )
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
        return (
            f"stopped: {ran} of {total} (checkpointed), depth {res.final_depth}, last loss {last:.4f}{held_out}; "
            f"run the same command again to resume"
        )
    return f"done: {ran}, final depth {res.final_depth}, last loss {last:.4f}{held_out}; outputs in {run_dir}"
