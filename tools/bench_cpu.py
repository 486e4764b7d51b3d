#!/usr/bin/env python
"""One training step on CPU, the engine against Hugging Face Llama, eager and compiled (issue 23).

    python tools/bench_cpu.py --out /tmp/bench_cpu.json            # both shapes, ~10+ min on 2 cores
    python tools/bench_cpu.py --shapes tiny --rounds 1 --steps 2   # a quick look

Four variants per shape, built once and then timed in alternating rounds (a shared machine's
load then hits each about equally): the engine eager (`model.compile: false`), the engine with
`model.compile: true`, transformers' LlamaForCausalLM eager and under torch.compile (SDPA,
tied embeddings, torch AdamW as a user gets it, clip 1.0 like the engine). fp32, random
tokens, the same shape and batch for all. Warm-up steps (compilation included) are not timed;
each variant's number is the median over all its timed steps. Then torch.profiler's top
entries of one engine eager step. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

SHAPES = {
    # issue 23's two shapes: the tiny preset at 12 layers, and SmolLM-360M's widths at 4 layers
    "tiny": dict(layers=12, hidden=128, ffn=352, heads=4, kv=2, vocab=8192, seq=128, batch=16),
    "360m": dict(layers=4, hidden=960, ffn=2560, heads=15, kv=5, vocab=49152, seq=512, batch=2),
}
VARIANTS = ("engine_eager", "engine_compiled", "hf_eager", "hf_compiled")


def _batch(sh: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, sh["vocab"], (sh["batch"], sh["seq"] + 1), generator=g)
    return {
        "tokens": t[:, :-1],
        "labels": t[:, 1:],
        "loss_mask": torch.ones(sh["batch"], sh["seq"]),
        "position_ids": torch.arange(sh["seq"]).expand(sh["batch"], sh["seq"]),
    }


def _engine_step(sh: dict, compiled: bool):
    from grow_megatron.config.model import ModelConfig
    from grow_megatron.config.training import OptimConfig
    from grow_megatron.engine.build import build_engine, train_step
    from grow_megatron.engine.resolve import engine_spec

    model = ModelConfig(
        num_layers=sh["layers"],
        hidden_size=sh["hidden"],
        ffn_hidden_size=sh["ffn"],
        num_attention_heads=sh["heads"],
        num_query_groups=sh["kv"],
        vocab_size=sh["vocab"],
        seq_length=sh["seq"],
        kernels="off",
        compile=compiled,
    )
    optim = OptimConfig(lr=1e-3, warmup_steps=0, decay_steps=0, clip_grad=1.0)
    torch.manual_seed(0)
    engine = build_engine(engine_spec(model, sh["vocab"], optim=optim, compile=compiled), sh["layers"])
    batch = _batch(sh)
    return lambda: train_step(engine, [batch], 1e-3)["loss"]


def _hf_step(sh: dict, compiled: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=sh["vocab"],
        hidden_size=sh["hidden"],
        intermediate_size=sh["ffn"],
        num_hidden_layers=sh["layers"],
        num_attention_heads=sh["heads"],
        num_key_value_heads=sh["kv"],
        max_position_embeddings=sh["seq"],
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fwd = torch.compile(model) if compiled else model
    x = _batch(sh)["tokens"]

    def step() -> float:
        loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _profile(step, top: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"name": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count} for e in rows]


def bench_shape(name: str, variants: list[str], rounds: int, steps: int, warmup: int, top: int) -> dict:
    sh = SHAPES[name]
    makers = {
        "engine_eager": lambda: _engine_step(sh, False),
        "engine_compiled": lambda: _engine_step(sh, True),
        "hf_eager": lambda: _hf_step(sh, False),
        "hf_compiled": lambda: _hf_step(sh, True),
    }
    fns, first, losses = {}, {}, {}
    for v in variants:
        fns[v] = makers[v]()
        t0 = time.perf_counter()
        for _ in range(warmup):
            losses[v] = fns[v]()
        first[v] = round(time.perf_counter() - t0, 2)
        print(f"[{name}] {v}: built, {warmup} warm-up step(s) in {first[v]:.1f}s", flush=True)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            for _ in range(steps):
                t0 = time.perf_counter()
                losses[v] = fns[v]()
                times[v].append(time.perf_counter() - t0)
        print(
            f"[{name}] round {r + 1}/{rounds}: "
            + ", ".join(f"{v} {statistics.median(times[v]):.3f}s" for v in variants),
            flush=True,
        )
    out = {
        "shape": sh,
        "warmup_s": first,
        "step_s": times,
        "last_loss": losses,
        "median_s": {v: statistics.median(t) for v, t in times.items()},
    }
    med = out["median_s"]
    out["ratios"] = {
        k: med[a] / med[b]
        for k, a, b in (
            ("engine_eager/hf_eager", "engine_eager", "hf_eager"),
            ("engine_compiled/hf_compiled", "engine_compiled", "hf_compiled"),
            ("engine_compiled/engine_eager", "engine_compiled", "engine_eager"),
        )
        if a in med and b in med
    }
    if top and "engine_eager" in fns:
        out["engine_eager_profile"] = _profile(fns["engine_eager"], top)
    return out


def table(results: dict) -> str:
    lines = [
        "| shape | " + " | ".join(f"{v} (s)" for v in VARIANTS) + " | engine/HF eager | engine/HF compiled |",
        "|---|" + "---:|" * (len(VARIANTS) + 2),
    ]
    for name, r in results.items():
        med, rat = r["median_s"], r["ratios"]
        cells = [f"{med[v]:.3f}" if v in med else "-" for v in VARIANTS]
        ratios = [
            f"{rat[k]:.2f}" if k in rat else "-" for k in ("engine_eager/hf_eager", "engine_compiled/hf_compiled")
        ]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="tiny,360m", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the variants")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation included)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile-top", type=int, default=12, help="entries of the engine's profile (0: none)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    a = ap.parse_args(argv)
    shapes, variants = a.shapes.split(","), a.variants.split(",")
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r}; one of {', '.join(SHAPES)}")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown variant {v!r}; of {', '.join(VARIANTS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    from grow_megatron.engine.distributed import device_context, init_distributed, shutdown_distributed

    results, load0 = {}, os.getloadavg()[0]
    with device_context():
        init_distributed(1, 1, seed=0)
        try:
            for s in shapes:
                results[s] = bench_shape(s, variants, a.rounds, a.steps, a.warmup, a.profile_top)
                torch._dynamo.reset()
        finally:
            shutdown_distributed()
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(sys.argv),
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "load_avg_start_end": [load0, os.getloadavg()[0]],
        "torch": torch.__version__,
    }
    print(table(results))
    for s, r in results.items():
        if "engine_eager_profile" in r:
            print(f"\nengine eager, {s}: top of one step's profile (self CPU ms, calls)")
            for e in r["engine_eager_profile"]:
                print(f"  {e['self_cpu_ms']:9.1f}  {e['calls']:5d}  {e['name']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
