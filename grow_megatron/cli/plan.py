"""`grow-megatron plan CONFIG.yaml`: the growth plan of a run, without building anything."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.config.run import config_world_size, load_run_config
from grow_megatron.growth.schedule import describe_plan


@dataclass
class PlanOptions:
    """Options of `grow-megatron plan`."""

    config: str = field(metadata=cli(positional=True))
    """run config YAML (see examples/)"""
    overrides: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True, metavar="KEY=VALUE"))
    """override a config field, e.g. --set growth.block_size=2 (repeatable)"""
    json: bool = False
    """print JSON instead of a table"""


def main(argv: list[str]) -> int:
    opts = options_from_args(PlanOptions, command_parser("grow-megatron plan", __doc__, PlanOptions).parse_args(argv))
    cfg = load_run_config(opts.config, opts.overrides, world_size=config_world_size(opts.config, opts.overrides))
    d = describe_plan(cfg)
    if opts.json:
        print(json.dumps(d, indent=1))
        return 0
    print(f"{'stage':>5} {'depth':>5} {'start':>9} {'steps':>9}  pipeline split")
    for s in d["stages"]:
        print(f"{s['stage']:>5} {s['depth']:>5} {s['start_step']:>9} {s['steps']:>9}  {s['pipeline_split']}")
    for g in d["growths"]:
        print(f"growth at step {g['step']}: {g['old_depth']} -> {g['new_depth']}, source map {g['source_map']}")
    return 0
