"""`grow-megatron bench-growth`: growth-operation latency and memory (grow_megatron.bench.growth).

    grow-megatron bench-growth --preset smollm-360m --depth 4 --depth 16 --seq 2048 --staging off,on --out g.json
    GM_PP=2 torchrun --nproc-per-node 2 -m grow_megatron.cli bench-growth --preset smollm-360m --depth 8

Each run builds the engine at --depth, trains one step and grows by one block (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

from grow_megatron.bench.growth import GrowthBenchOptions, run
from grow_megatron.cli.flags import command_parser, options_from_args


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron bench-growth", __doc__, GrowthBenchOptions)


def main(argv: list[str] | None = None) -> int:
    run(options_from_args(GrowthBenchOptions, build_parser().parse_args(argv)))
    return 0
