"""`grow-megatron plan CONFIG.yaml`: the growth plan of a run, without building anything."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from grow_megatron.cli.flags import add_flags, cli, options_from_args
from grow_megatron.config.base import ConfigError
from grow_megatron.config.run import load_run_config, parse_override, read_yaml
from grow_megatron.growth.partition import split_at
from grow_megatron.growth.schedule import plan_from_config


def describe_plan(cfg) -> dict:
    plan = plan_from_config(cfg)
    n_stages = cfg.parallel.num_virtual_stages
    stages, start = [], 0
    depth = plan.initial_depth
    for i, steps in enumerate(plan.stage_steps):
        if i > 0:
            depth = plan.growths[i - 1].new_depth
        last = i == len(plan.stage_steps) - 1
        n = cfg.train.steps - start if last else steps
        stages.append({"stage": i + 1, "depth": depth, "start_step": start, "steps": n,
                       "pipeline_split": list(split_at(depth, n_stages, cfg.parallel.pipeline_split))})
        start += steps
    return {"operator": cfg.growth.operator, "block_size": cfg.growth.block_size, "stages": stages,
            "growths": [{"step": b, **g.to_dict()} for b, g in zip(plan.boundaries, plan.growths)]}


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
    p = argparse.ArgumentParser(prog="grow-megatron plan", description=__doc__)
    add_flags(p, PlanOptions)
    opts = options_from_args(PlanOptions, p.parse_args(argv))
    cfg = load_run_config(opts.config, opts.overrides, world_size=cfg_world(opts.config, opts.overrides))
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


def cfg_world(path, overrides) -> int:
    """The world size the config is meant for: TP x PP (one data-parallel replica)."""
    par = dict(read_yaml(path).get("parallel") or {})
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("parallel."):
            par[key[len("parallel."):]] = value
    sizes = []
    for name in ("tensor_parallel", "pipeline_parallel"):
        v = par.get(name, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"parallel.{name}", v, "must be a positive integer")
        sizes.append(v)
    return sizes[0] * sizes[1]
