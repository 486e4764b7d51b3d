"""`grow-megatron plan CONFIG.yaml`: the growth plan of a run, without building anything."""
from __future__ import annotations

import argparse
import json


def describe_plan(cfg) -> dict:
    from grow_megatron.growth.partition import split_at
    from grow_megatron.growth.schedule import plan_from_config

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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="grow-megatron plan", description=__doc__)
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    from grow_megatron.config.run import load_run_config

    cfg = load_run_config(args.config, args.overrides,
                          world_size=cfg_world(args.config, args.overrides))
    d = describe_plan(cfg)
    if args.json:
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
    from grow_megatron.config.base import ConfigError
    from grow_megatron.config.run import parse_override, read_yaml

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
