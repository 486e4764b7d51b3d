"""The run directory of a checkpoint grown on disk (engine/offline_grow.py grows the
checkpoint itself): its config.yaml, a static run at the grown depth, and the source run's
records, so that plots and compare-runs show the model's whole life."""

from __future__ import annotations

import json
import os

import yaml

from grow_megatron.config.run import read_yaml
from grow_megatron.config.rundir import GrowthEvent, RunDir
from grow_megatron.growth.operators import Growth


def carry_run_records(src_run_dir: str, out_dir: str, step: int, growth_event: GrowthEvent) -> int:
    """Copy the source run's metrics.jsonl and events.jsonl records before `step` into the grown
    run's directory and add the offline growth to its events, so that its plots and
    compare-runs show the model's whole life. Returns the number of metrics records carried."""
    carried = 0
    src, out = RunDir(src_run_dir), RunDir(out_dir)
    for read, path in ((src.read_metrics, out.metrics), (src.read_events, out.events)):
        keep = [json.dumps(r) + "\n" for r in read() if r.get("step", step) < step]
        if path == out.metrics:
            carried = len(keep)
        else:
            keep.append(json.dumps(RunDir.event_record(step, "growth", growth_event.to_dict())) + "\n")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(keep)
    return carried


def grown_run_config(src_config: str, growth: Growth, run_dir: str) -> str:
    """The source run's config.yaml as a static run at the grown depth in `run_dir` (YAML text):
    `train` on it resumes from the grown checkpoint and keeps training the deeper model."""
    raw = read_yaml(src_config)
    raw["run_dir"] = os.path.abspath(run_dir)
    raw["name"] = f"{raw.get('name', 'run')}-{growth.operator}-grown-{growth.new_depth}"
    raw.setdefault("model", {})["num_layers"] = growth.new_depth
    raw["growth"] = {"operator": "none"}
    raw.setdefault("parallel", {}).pop("pipeline_split", None)  # was for the old final depth
    raw.setdefault("checkpoint", {})["resume"] = "auto"
    return yaml.safe_dump(raw, sort_keys=False)
