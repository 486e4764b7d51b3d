"""RunConfig: one YAML file per run, mapped onto the component dataclasses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from grow_megatron.config.base import ConfigError, check, from_dict, to_dict
from grow_megatron.config.data import DataConfig
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.rundir import CONFIG
from grow_megatron.config.training import (
    CheckpointConfig,
    GrowthConfig,
    LoggingConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)


@dataclass
class RunConfig:
    """A training run."""

    name: str = "run"
    """Run name (logs)."""
    run_dir: str = "runs/run"
    """Where checkpoints, metrics.jsonl, TensorBoard logs and the resolved config go. A relative
    run_dir is an output location like any command's --out: taken from the current directory
    (not from the config file's, so `train examples/x.yaml` writes to ./runs/...). The run's
    config.yaml stores it absolute, so resuming, converting and evaluating work from anywhere."""
    model: ModelConfig = field(default_factory=ModelConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    accept_changes: list[str] = field(default_factory=list)
    """Fields of the run's identity (training/identity.py: data sources, optim.*, train.seed)
    that this resume changes on purpose, e.g. --set accept_changes=[data.datasets]; each change
    is recorded with its step in RUN_DIR/config_history.jsonl. Without it a resume that changes
    one is refused (train.steps needs none: training a run further). The model, the growth
    plan, the global batch size and the tokenizer cannot change within a run."""

    @property
    def grow_steps(self) -> int:
        """Steps until the final depth (growth.grow_steps, default: until the LR decay starts)."""
        if self.growth.grow_steps is not None:
            return self.growth.grow_steps
        return max(1, self.train.steps - self.optim.decay_steps)

    def validate(self, world_size: int = 1) -> RunConfig:
        check(bool(self.name.strip()), "name", self.name, "may not be empty")
        self.model.validate()
        # max(): a zero TP/PP must reach parallel.validate's message, not divide by zero here.
        dp = world_size // max(1, self.parallel.tensor_parallel * self.parallel.pipeline_parallel) or 1
        self.train.validate(dp_size=dp)
        self.optim.validate(self.train.steps)
        self.growth.validate(self.model.num_layers, self.train.steps)
        if self.growth.enabled:
            k = self.model.num_layers // self.growth.block_size
            check(
                self.grow_steps >= k,
                "growth.grow_steps",
                self.grow_steps,
                f"must give each of the {k} stages at least one step",
            )
        tc = self.train
        mbs_per_step = tc.global_batch_size // (tc.micro_batch_size * dp)
        counts = (
            (
                "train.global_batch_size",
                tc.global_batch_size,
                mbs_per_step,
                f"/ micro_batch_size {tc.micro_batch_size} / data-parallel size {dp}",
            ),
        )
        if tc.eval_interval:
            counts += (("train.eval_batches", tc.eval_batches, tc.eval_batches, "evaluation"),)
        self.parallel.validate(
            world_size,
            self.model.num_layers,
            self.model.num_attention_heads,
            self.model.kv_heads,
            initial_layers=self.growth.block_size if self.growth.enabled else None,
            microbatches=counts,
            seq_length=self.model.seq_length,
        )
        if self.model.loop is not None:
            self._validate_loop()
        self.data.validate()
        self.checkpoint.validate()
        self.logging.validate()
        return self

    def _validate_loop(self) -> None:
        # Where the block sits against the pipeline stages is checked with the plan
        # (growth.schedule.plan_from_config), which owns the layer split.
        self.model.loop.validate(
            self.model.num_layers, self.train.steps, self.grow_steps if self.growth.enabled else None
        )


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    check(all(keys), "--set", f"{dotted}={value}", "the key must be a dotted field name, e.g. --set train.steps=100")
    for k in keys[:-1]:
        if d.get(k) is None:  # absent, or a section left empty in the YAML (`train:`)
            d[k] = {}
        d = d[k]
        if not isinstance(d, dict):
            raise ConfigError(dotted, value, f"{k} is not a section")
    d[keys[-1]] = value


HF_PREFIX = "hf:"


def _absolute(path: str, base: str) -> str:
    """`path` made absolute from directory `base` (with ~ expanded); `hf:REPO[:CONFIG]` is
    rewritten only when REPO is a local directory there (a hub name stays a name)."""
    if path.startswith(HF_PREFIX):
        rest = path[len(HF_PREFIX) :]
        repo, sep, config = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if not sep or not config or "/" in config:
            repo, sep, config = rest, "", ""
        local = os.path.join(base, os.path.expanduser(repo))
        return HF_PREFIX + os.path.abspath(local) + sep + config if os.path.isdir(local) else path
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def resolve_paths(raw: dict, base: str, run_dir: bool) -> dict:
    """Make the file and directory fields of a raw run config absolute from directory `base`, in
    place: data.datasets[].path, data.tokenizer, data.cache_dir, and run_dir if `run_dir`.

    Paths written in a config file are relative to that file, so a config reads the same data
    from any current directory; run_dir and the paths of --set overrides are relative to the
    current directory. Values of the wrong type are left for validation to report."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("tokenizer", "cache_dir"):
            if isinstance(data.get(key), str) and data[key].strip():
                data[key] = _absolute(data[key], base)
        datasets = data.get("datasets")
        for ds in datasets if isinstance(datasets, list) else []:
            if isinstance(ds, dict) and isinstance(ds.get("path"), str) and ds["path"].strip():
                ds["path"] = _absolute(ds["path"], base)
    if run_dir and isinstance(raw.get("run_dir"), str) and raw["run_dir"].strip():
        raw["run_dir"] = _absolute(raw["run_dir"], base)
    return raw


def read_yaml(path: str, field: str = "config") -> dict:
    """The mapping in a YAML run config file, its data paths made absolute from the file's
    directory (resolve_paths); every way a file can be unusable is a ConfigError."""
    if os.path.isdir(path):
        raise ConfigError(field, path, "is a directory: give the run config YAML file (e.g. examples/tiny_lidas.yaml)")
    if not os.path.isfile(path):
        raise ConfigError(field, path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ConfigError(field, path, "is not a UTF-8 text file: give the run config YAML") from None
    except OSError as err:
        raise ConfigError(field, path, f"cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        # The error spans several lines (the offending line and a caret); keep one.
        raise ConfigError(field, path, f"is not valid YAML: {' '.join(str(err).split())}") from None
    # An empty file (or one of comments only) is no config: read as "all defaults" it trains a
    # default model into ./runs/run, e.g. from the config.yaml of an interrupted `grow`.
    check(
        raw is not None,
        field,
        path,
        "is empty: a run config is a mapping of sections (model:, train:, ...; see examples/tiny_lidas.yaml)",
    )
    check(isinstance(raw, dict), field, path, "must hold a mapping of sections (model:, growth:, ...)")
    return resolve_paths(raw, os.path.dirname(os.path.abspath(path)), run_dir=False)


@dataclass
class RunInfo:
    """The parts of a run's config.yaml that reading its checkpoints needs."""

    model: ModelConfig
    data: DataConfig
    path: str


def read_run_info(config_path: str) -> RunInfo:
    """Model and data sections of a resolved run config (the rest is not validated: a TP=2 run's
    config must still be readable in a single process)."""
    if not os.path.isfile(config_path):
        raise ConfigError("config", config_path, f"file not found (give the run's {CONFIG} with --config)")
    raw = read_yaml(config_path)
    model = from_dict(ModelConfig, ModelConfig.from_preset_dict(dict(raw.get("model") or {})), "model")
    model.validate()
    data = from_dict(DataConfig, dict(raw.get("data") or {}), "data")
    return RunInfo(model, data, os.path.abspath(config_path))


def parse_override(item: str) -> tuple[str, Any]:
    """`section.field=value` -> (key, YAML value)."""
    check("=" in item, "--set", item, "must look like section.field=value, e.g. train.steps=100")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(
            "--set", item, f"the value is not valid YAML (quote it, e.g. --set '{key.strip()}=\"...\"')"
        ) from None
    return key.strip(), value


def config_world_size(path: str, overrides: list[str]) -> int:
    """The world size the config is meant for: TP x PP (one data-parallel replica)."""
    par = dict(read_yaml(path).get("parallel") or {})
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("parallel."):
            par[key[len("parallel.") :]] = value
    sizes = []
    for name in ("tensor_parallel", "pipeline_parallel"):
        v = par.get(name, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"parallel.{name}", v, "must be a positive integer")
        sizes.append(v)
    return sizes[0] * sizes[1]


def load_run_config(path: str | None = None, overrides: list[str] | None = None, world_size: int = 1) -> RunConfig:
    """Read a YAML run config, apply `key.sub=value` overrides, map and validate it. Paths come
    out absolute (see resolve_paths)."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml(path)
    sections = list(raw)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    raw = resolve_paths(dict(raw), os.getcwd(), run_dir=True)
    model = raw.get("model") or {}
    check(
        isinstance(model, dict), "model", model, "must be a mapping of ModelConfig fields (preset:, num_layers:, ...)"
    )
    named_model = "model" in raw
    raw["model"] = ModelConfig.from_preset_dict(dict(model))
    cfg = from_dict(RunConfig, raw)  # (a misspelt section is named first)
    # The model is what a run trains; a file that names none would train the default one.
    check(
        path is None or named_model,
        "config",
        path,
        f"names no model (it has {', '.join(map(str, sections)) or 'no sections'}): a run config needs a model "
        "section (model: {preset: tiny} or num_layers:, hidden_size:, ...; see examples/tiny_lidas.yaml)",
    )
    return cfg.validate(world_size)


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
