"""RunConfig: one YAML file per run, mapped onto the component dataclasses."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from grow_megatron.config.base import ConfigError, check, from_dict, to_dict
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.training import (CheckpointConfig, GrowthConfig, LoggingConfig, OptimConfig,
                                           ParallelConfig, TrainConfig)
from grow_megatron.data.config import DataConfig


@dataclass
class RunConfig:
    """A training run."""

    name: str = "run"
    """Run name (logs)."""
    run_dir: str = "runs/run"
    """Where checkpoints, metrics.jsonl, TensorBoard logs and the resolved config go. A relative
    path is taken from the current directory."""
    model: ModelConfig = field(default_factory=ModelConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def grow_steps(self) -> int:
        """Steps until the final depth (growth.grow_steps, default: until the LR decay starts)."""
        if self.growth.grow_steps is not None:
            return self.growth.grow_steps
        return max(1, self.train.steps - self.optim.decay_steps)

    def validate(self, world_size: int = 1) -> "RunConfig":
        check(bool(self.name.strip()), "name", self.name, "may not be empty")
        self.model.validate()
        dp = world_size // (self.parallel.tensor_parallel * self.parallel.pipeline_parallel) or 1
        self.train.validate(dp_size=dp)
        self.optim.validate(self.train.steps)
        self.growth.validate(self.model.num_layers, self.train.steps)
        if self.growth.enabled:
            k = self.model.num_layers // self.growth.block_size
            check(self.grow_steps >= k, "growth.grow_steps", self.grow_steps,
                  f"must give each of the {k} stages at least one step")
        tc = self.train
        mbs_per_step = tc.global_batch_size // (tc.micro_batch_size * dp)
        counts = (("train.global_batch_size", tc.global_batch_size, mbs_per_step,
                   f"/ micro_batch_size {tc.micro_batch_size} / data-parallel size {dp}"),)
        if tc.eval_interval:
            counts += (("train.eval_batches", tc.eval_batches, tc.eval_batches, "evaluation"),)
        self.parallel.validate(world_size, self.model.num_layers, self.model.num_attention_heads, self.model.kv_heads,
                               initial_layers=self.growth.block_size if self.growth.enabled else None,
                               microbatches=counts)
        self.data.validate()
        self.checkpoint.validate()
        return self


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(dotted, value, f"{k} is not a section")
    d[keys[-1]] = value


def load_run_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                    world_size: int = 1) -> RunConfig:
    """Read a YAML run config, apply `key.sub=value` overrides, map and validate it."""
    raw: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError("config", path, "file not found")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as err:
                raise ConfigError("config", path, f"is not valid YAML: {err}") from None
        check(isinstance(raw, dict), "config", path, "must hold a mapping of sections (model:, growth:, ...)")
    for item in overrides or []:
        check("=" in item, "override", item, "must look like section.field=value, e.g. train.steps=100")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    raw = dict(raw)
    raw["model"] = ModelConfig.from_preset_dict(dict(raw.get("model") or {}))
    return from_dict(RunConfig, raw).validate(world_size)


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
