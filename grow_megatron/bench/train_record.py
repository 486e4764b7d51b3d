"""A real training run recorded for the benchmark notes (its command: grow_megatron.cli.train_record):
per-step tokens/s, depth, loss and peak memory, the growth events, and a per-depth summary, in a
JSON file rewritten as the run goes (a run stopped by a time limit still leaves its record).
The steps go through `training.loop.train`, so their times include the data loader."""

from __future__ import annotations

import json
import statistics

import torch

from grow_megatron.bench.report import environment
from grow_megatron.config.run import load_run_config
from grow_megatron.engine.distributed import shutdown_distributed, world_size_from_env
from grow_megatron.training.loop import train


def _summary(steps: list[dict], growths: list[dict]) -> list[dict]:
    out = []
    for depth in sorted({r["depth"] for r in steps}):
        recs = [r for r in steps if r["depth"] == depth]
        rest = recs[1:] or recs  # the first step of a stage carries the growth's warm-up
        out.append(
            {
                "depth": depth,
                "steps": len(recs),
                "first_step": recs[0]["step"],
                "first_step_tokens_per_s": recs[0]["tokens_per_s"],
                "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rest),
                "peak_memory_gib": max(r["peak_memory_gib"] for r in recs)
                if recs[0]["peak_memory_gib"] is not None
                else None,
            }
        )
    return out


def record_training(config: str, overrides: list[str], out: str, argv: list[str], prog: str) -> dict:
    """Train `config` (with `overrides`) and record it to the JSON file `out`; returns the record.
    `argv` and `prog`: the command line, for the record's environment."""
    cfg = load_run_config(config, overrides, world_size=world_size_from_env())
    gpu = torch.cuda.is_available()
    record: dict = {
        "config": config,
        "overrides": overrides,
        "steps": [],
        "growths": [],
        "stages": [],
        "tokens_per_step": cfg.train.global_batch_size * cfg.model.seq_length,
    }

    def write() -> None:
        record["stages"] = _summary(record["steps"], record["growths"]) if record["steps"] else []
        with open(out, "w") as f:
            json.dump(record, f, indent=1)

    def on_step(engine, step: int, rec: dict) -> None:
        # Peak since the previous step (each step's own, growth included for a stage's first).
        peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        record["steps"].append(
            {
                "step": step,
                "depth": rec["depth"],
                "step_s": rec["step_s"],
                "tokens_per_s": rec["tokens_per_s"],
                "loss": rec["loss"],
                "peak_memory_gib": peak,
            }
        )
        if step % 10 == 0 or rec["depth"] != record["steps"][max(0, len(record["steps"]) - 2)]["depth"]:
            write()

    # Recorded first: a run that crashes or is stopped still says where it ran.
    record["environment"] = environment(argv, {"world_size": world_size_from_env()}, prog=prog)
    record["settings"] = {
        "precision": cfg.train.precision,
        "kernels": cfg.model.kernels,
        "steps": cfg.train.steps,
        "global_batch_size": cfg.train.global_batch_size,
        "micro_batch_size": cfg.train.micro_batch_size,
        "seq_length": cfg.model.seq_length,
    }
    try:
        res = train(cfg, on_step=on_step)
        record["growths"] = [g.to_dict() for g in res.growths]  # events.jsonl's records
        record["eval_losses"] = {str(k): v for k, v in res.eval_losses.items()}
        record["completed"] = True
    finally:
        write()
        shutdown_distributed()
    return record
