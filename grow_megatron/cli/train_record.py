"""A real training run (data pipeline, growth, eval, checkpoint) recorded for the benchmark notes
(grow_megatron.bench.train_record): tokens/s per step and per stage around each growth, growth
seconds, peak memory per stage.

    python -m grow_megatron.cli.train_record examples/smollm360m_lidas_short.yaml --out train.json \\
        [--set key=value ...]

Unlike `grow-megatron bench` this goes through `training.loop.train`, so its step times include
the data loader; it is the "does a grown run behave on the GPU" record, not the throughput figure.
The JSON is rewritten after every step, so a run stopped by a time limit still leaves its record.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from grow_megatron.cli.flags import cli, command_parser, options_from_args

PROG = "python -m grow_megatron.cli.train_record"


@dataclass
class TrainRecordOptions:
    """Options of `python -m grow_megatron.cli.train_record`."""

    config: str = field(metadata=cli(positional=True))
    """run config YAML"""
    out: str
    """JSON record path"""
    overrides: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True, metavar="KEY=VALUE"))
    """override a config field (repeatable)"""


def main(argv: list[str] | None = None) -> int:
    p = command_parser(PROG, __doc__, TrainRecordOptions)
    opts = options_from_args(TrainRecordOptions, p.parse_args(argv))
    # torch and megatron-core (seconds): once the arguments are good, so --help answers at once.
    from grow_megatron.bench.train_record import record_training

    record = record_training(opts.config, opts.overrides, opts.out, sys.argv[1:] if argv is None else list(argv), PROG)
    for s in record["stages"]:
        mem = f", peak {s['peak_memory_gib']:.2f} GiB" if s["peak_memory_gib"] is not None else ""
        print(
            f"depth {s['depth']:>3}: {s['steps']:>4} steps, median {s['tokens_per_s_median']:,.0f} tokens/s "
            f"(first step {s['first_step_tokens_per_s']:,.0f}){mem}",
            flush=True,
        )
    for g in record["growths"]:
        print(f"growth at step {g['step']}: {g['old_depth']} -> {g['new_depth']} in {g['seconds']:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
