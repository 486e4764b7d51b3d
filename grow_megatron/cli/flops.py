"""`grow-megatron flops`: training FLOPs of a static vs a grown run (docs/method.md §6), table and JSON.

    grow-megatron flops --preset smollm-360m --paper          # Table 7 of the paper
    grow-megatron flops run.yaml [--json out.json]            # a run config
    grow-megatron flops runs/tiny_lidas                       # a run directory (its config.yaml)
    grow-megatron flops --layers 8 --hidden 64 --ffn 256 --heads 4 --kv-heads 2 \\
        --vocab 1000 --seq 128 --steps 1000 --grow-steps 800 --block-size 2 --tokens-per-step 4096

Precedence: explicit flags > run config > preset > (with --paper) the paper's settings.
The vocabulary of a run config is the one the trainer builds the model with: model.vocab_size,
else the tokenizer's (data.tokenizer, or the embedded one), padded for tensor parallelism; a
run directory with checkpoints gives it exactly, from the embedding's shape.
"""

from __future__ import annotations

import argparse
import json
import sys

from grow_megatron.bench.flops import FlopsOptions, compute
from grow_megatron.cli.flags import command_parser, options_from_args


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron flops", __doc__, FlopsOptions)


def main(argv: list[str] | None = None) -> int:
    args = options_from_args(FlopsOptions, build_parser().parse_args(argv))
    texts, result = compute(args)
    for text in texts:
        print(text)
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
