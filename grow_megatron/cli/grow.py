"""`grow-megatron grow CHECKPOINT --operator lidas --block-size 4 --out NEW_RUN_DIR`:
grow a trained checkpoint on disk (weights, fp32 main copies, AdamW moments and step), then
keep training the deeper model with `grow-megatron train NEW_RUN_DIR/config.yaml`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.config.base import ConfigError
from grow_megatron.growth.operators import OPERATORS, get_operator


@dataclass
class GrowOptions:
    """Options of `grow-megatron grow`."""

    checkpoint: str = field(metadata=cli(positional=True))
    """a run directory (its latest checkpoint) or one checkpoint directory"""
    operator: str = field(metadata=cli(choices=sorted(OPERATORS)))
    """growth operator (docs/method.md §3)"""
    block_size: int
    """layers to add (b)"""
    out: str
    """new run directory (config.yaml + checkpoints/)"""
    function_preserving: bool = False
    """zero the copies' output projections: the grown model computes the same function"""
    config: str | None = None
    """the source run's config.yaml (default: the one in its run directory)"""


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron grow", __doc__, GrowOptions)


def main(argv: list[str]) -> int:
    opts = options_from_args(GrowOptions, build_parser().parse_args(argv))
    # torch and megatron-core (ten seconds): not for --help or a mistyped flag.
    from grow_megatron.config.run import read_run_info
    from grow_megatron.config.rundir import CONFIG, GrowthEvent, RunDir
    from grow_megatron.convert.native import resolve_checkpoint
    from grow_megatron.engine.checkpoint import list_checkpoints, read_meta
    from grow_megatron.engine.distributed import device_context, shutdown_distributed
    from grow_megatron.engine.faults import fault_point
    from grow_megatron.engine.offline_grow import grow_checkpoint
    from grow_megatron.engine.staging import remove_leftovers, staged_dir
    from grow_megatron.training.grown_run import carry_run_records, grown_run_config

    ckpt, run_dir = resolve_checkpoint(opts.checkpoint)
    config = opts.config or (RunDir(run_dir).config if run_dir else None)
    if config is None:
        raise ConfigError("--config", None, f"{ckpt} is not inside a run directory: give the run's {CONFIG}")
    info = read_run_info(config)
    meta = read_meta(ckpt)
    depth = int(meta["depth"])
    try:
        growth = get_operator(opts.operator, opts.function_preserving)(depth, opts.block_size)
    except ValueError as err:
        raise ConfigError("--block-size", opts.block_size, f"{err} (the checkpoint has {depth} layers)") from None
    out = os.path.abspath(opts.out)
    # A grow killed before it published left only its staging directory (OUT itself never
    # exists half-written): say so and start over.
    for left in remove_leftovers(out):
        print(
            f"note: an earlier grow into {out} did not finish (killed?); removed its incomplete output {left}",
            file=sys.stderr,
        )
    out_run = RunDir(out)
    if list_checkpoints(out_run.checkpoints):
        raise ConfigError("--out", opts.out, "already holds checkpoints: choose a new directory")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError("--out", opts.out, "exists and is not an empty directory: choose a new directory")
    step = meta["step"]  # the grown checkpoint keeps the step it was grown at
    # Everything is written into a staging directory that becomes OUT by one rename once the
    # checkpoint, the history and config.yaml are all in it (engine/staging.py).
    with staged_dir(out, before_publish=lambda: fault_point("grow.staged")) as stage:
        try:
            with device_context():
                staged_ckpt = grow_checkpoint(ckpt, growth, info.model, RunDir(stage).checkpoints)
        finally:
            shutdown_distributed()
        fault_point("grow.checkpoint")
        carried = (
            carry_run_records(run_dir, stage, step, GrowthEvent.from_dict(read_meta(staged_ckpt)["growths"][-1]))
            if run_dir
            else 0
        )
        fault_point("grow.history")
        with open(RunDir(stage).config, "w") as f:  # its run_dir is OUT, not the staging name
            f.write(grown_run_config(config, growth, out))
            f.flush()
            os.fsync(f.fileno())
    new_ckpt = os.path.join(out, os.path.relpath(staged_ckpt, stage))
    print(
        f"grew {ckpt}: depth {depth} -> {growth.new_depth} ({growth.operator}), source map "
        f"{list(growth.source_map)}\nwrote {new_ckpt} (step {step}, optimizer state included)"
        + (f"; carried the source run's history ({carried} metrics records, growth events)" if run_dir else "")
        + "\n"
        f"continue: grow-megatron train {out_run.config} --set train.steps=<more than {step}> "
        f"(the LR follows optim.on_extend: continue, the default, goes on from the source run's LR; "
        f"--set optim.on_extend=rewarmup warms it up again)"
    )
    return 0
