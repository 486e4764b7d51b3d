"""A real training run (data pipeline, growth, eval, checkpoint) recorded for the benchmark notes:
tokens/s per step and per stage around each growth, growth seconds, peak memory per stage.

    python -m grow_megatron.bench.train_record examples/smollm360m_lidas_short.yaml --out train.json \\
        [--set key=value ...]

Unlike `grow-megatron bench` this goes through `training.loop.train`, so its step times include
the data loader; it is the "does a grown run behave on the GPU" record, not the throughput figure.
The JSON is rewritten after every step, so a run stopped by a time limit still leaves its record.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Optional


def _summary(steps: list[dict], growths: list[dict]) -> list[dict]:
    out = []
    for depth in sorted({r["depth"] for r in steps}):
        recs = [r for r in steps if r["depth"] == depth]
        rest = recs[1:] or recs  # the first step of a stage carries the growth's warm-up
        out.append({"depth": depth, "steps": len(recs), "first_step": recs[0]["step"],
                    "first_step_tokens_per_s": recs[0]["tokens_per_s"],
                    "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in rest),
                    "peak_memory_gib": max(r["peak_memory_gib"] for r in recs) if recs[0]["peak_memory_gib"]
                    is not None else None})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m grow_megatron.bench.train_record", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="JSON record path")
    args = p.parse_args(argv)

    import torch

    from grow_megatron.bench.report import environment
    from grow_megatron.config.run import load_run_config
    from grow_megatron.engine.distributed import shutdown_distributed, world_size_from_env
    from grow_megatron.training.loop import train

    cfg = load_run_config(args.config, args.overrides, world_size=world_size_from_env())
    gpu = torch.cuda.is_available()
    record: dict = {"config": args.config, "overrides": args.overrides, "steps": [], "growths": [], "stages": [],
                    "tokens_per_step": cfg.train.global_batch_size * cfg.model.seq_length}

    def write() -> None:
        record["stages"] = _summary(record["steps"], record["growths"]) if record["steps"] else []
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)

    def on_step(engine, step: int, rec: dict) -> None:
        # Peak since the previous step (each step's own, growth included for a stage's first).
        peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        record["steps"].append({"step": step, "depth": rec["depth"], "step_s": rec["step_s"],
                                "tokens_per_s": rec["tokens_per_s"], "loss": rec["loss"], "peak_memory_gib": peak})
        if step % 10 == 0 or rec["depth"] != record["steps"][max(0, len(record["steps"]) - 2)]["depth"]:
            write()

    # Recorded first: a run that crashes or is stopped still says where it ran.
    record["environment"] = environment(sys.argv[1:] if argv is None else list(argv),
                                        {"world_size": world_size_from_env()},
                                        prog="python -m grow_megatron.bench.train_record")
    record["settings"] = {"precision": cfg.train.precision, "kernels": cfg.model.kernels, "steps": cfg.train.steps,
                          "global_batch_size": cfg.train.global_batch_size,
                          "micro_batch_size": cfg.train.micro_batch_size, "seq_length": cfg.model.seq_length}
    try:
        res = train(cfg, on_step=on_step)
        record["growths"] = res.growths
        record["eval_losses"] = {str(k): v for k, v in res.eval_losses.items()}
        record["completed"] = True
    finally:
        write()
        shutdown_distributed()
    if record["stages"]:
        for s in record["stages"]:
            mem = f", peak {s['peak_memory_gib']:.2f} GiB" if s["peak_memory_gib"] is not None else ""
            print(f"depth {s['depth']:>3}: {s['steps']:>4} steps, median {s['tokens_per_s_median']:,.0f} tokens/s "
                  f"(first step {s['first_step_tokens_per_s']:,.0f}){mem}", flush=True)
    for g in record["growths"]:
        print(f"growth at step {g['step']}: {g['old_depth']} -> {g['new_depth']} in {g['seconds']:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
