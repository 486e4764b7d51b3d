"""`grow-megatron loop-sweep MODEL`: inference-time looping over blocks and repeats (docs/method.md §10).

    grow-megatron loop-sweep MODEL --out DIR [--blocks 4:8,6:10] [--repeats 1,2,3,4]
        [--tasks paper --n 100 --seed 0] [--heldout FILE] [--seq-length 128]

For every (block, repeats) the model (an HF directory, a native run or checkpoint) is looped
with `--loop START:ENDxR` semantics and scored on the reasoning primitives (docs/method.md §8) and the
held-out NLL; R = 1 is the plain model, scored once and shown as the baseline row. Writes
DIR/loop_sweep.json, DIR/loop_sweep.md (the table) and DIR/loop_sweep.png (heatmaps).

Default blocks (docs/method.md §10): the blocks the model's growths copied and the copies they inserted,
at their positions in the final model (read from the growth history that native checkpoints
and our HF exports carry; a block that a later growth cut in two is skipped); for a model
with no history, the b layers around the middle (LIDAS's rule).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.config.base import ConfigError, check_output_dir
from grow_megatron.config.options import check_positive
from grow_megatron.convert.hf import HISTORY_FIELD
from grow_megatron.convert.load import load_model
from grow_megatron.eval import primitives
from grow_megatron.eval.loop_sweep import (
    SweepConfig,
    default_blocks,
    history_blocks,
    parse_blocks,
    parse_repeats,
    sweep,
    write_sweep,
)


@dataclass
class LoopSweepOptions:
    """Options of `grow-megatron loop-sweep`."""

    model: str = field(metadata=cli(positional=True))
    """HF model directory, native run directory or checkpoint directory"""
    out: str
    """output directory (loop_sweep.json, .md, .png)"""
    blocks: str | None = None
    """comma list of START:END blocks (default: from the growth history, see above)"""
    block_size: int | None = None
    """size of the default blocks (default: the growth history's, or 4)"""
    repeats: str = "1,2,3,4"
    """comma list of repeat counts (default 1,2,3,4)"""
    tasks: str = "paper"
    """reasoning primitives as for `grow-megatron eval`, or 'none'"""
    n: int = 100
    """examples per task"""
    seed: int = 0
    """seed of the primitive tasks"""
    heldout: list[str] = field(default_factory=list, metadata=cli(append=True, metavar="FILE"))
    """held-out text (.txt, or .jsonl with 'text') for NLL; repeatable"""
    seq_length: int | None = None
    """NLL context length (default: min(2048, the model's))"""
    max_chunks: int | None = None
    """at most this many NLL sequences per file"""
    batch_size: int = 16
    """(context, choice) rows or NLL sequences per forward pass"""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the model is loaded in"""
    config: str | None = None
    """a native checkpoint's run config.yaml (default: RUN_DIR/config.yaml)"""
    quiet: bool = False
    """no progress bar"""


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron loop-sweep", __doc__, LoopSweepOptions)


def main(argv: list[str] | None = None) -> int:
    opts = options_from_args(LoopSweepOptions, build_parser().parse_args(argv))
    tasks = [] if opts.tasks == "none" else primitives.parse_tasks(opts.tasks)
    repeats = parse_repeats(opts.repeats)
    blocks = parse_blocks(opts.blocks) if opts.blocks else None
    check_positive(opts, "n", "batch_size", "seq_length", "max_chunks", "block_size")
    for path in opts.heldout:
        if not os.path.isfile(path):
            raise ConfigError("--heldout", path, "no such file: give a plain-text or .jsonl file")
    if not tasks and not opts.heldout:
        raise ConfigError("--tasks", opts.tasks, "nothing to score: give tasks or --heldout FILE")
    check_output_dir(opts.out, "--out")
    # Looping re-applies Llama decoder layers, so only Llama-layout models are accepted; the
    # primitives need the tokenizer (the loader names the missing files in one line).
    loaded = load_model(
        opts.model, opts.device, opts.dtype, accept="llama", need_tokenizer=bool(tasks), config=opts.config
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    depth = len(model.model.layers)
    history = getattr(model.config, HISTORY_FIELD, None)
    cfg = SweepConfig(
        blocks=blocks or default_blocks(depth, history, opts.block_size),
        repeats=repeats,
        tasks=tasks,
        n=opts.n,
        seed=opts.seed,
        heldout=list(opts.heldout),
        seq_length=opts.seq_length,
        max_chunks=opts.max_chunks,
        batch_size=opts.batch_size,
    )
    result = sweep(model, tokenizer, cfg, device=opts.device, progress=not opts.quiet)
    result["model"] = opts.model
    result["growth_history_blocks"] = history_blocks(history)
    md, (js, _, png) = write_sweep(result, opts.out, opts.model)
    print(md)
    print(f"wrote {js}, loop_sweep.md, {os.path.basename(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
