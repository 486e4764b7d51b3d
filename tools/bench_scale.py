#!/usr/bin/env python
"""Peak memory per rank and step time with each scale feature on and off, side by side (gloo ranks).

    python tools/bench_scale.py --out runs/bench_scale.json                # SmolLM-360M widths, 4 layers, 2 ranks
    python tools/bench_scale.py --hidden 64 --ffn 160 --heads 4 --groups 2 --vocab 256 --seq 64 --steps 2  # quick
    python tools/bench_scale.py --world 1 --seq 2048 --out scale.json     # one GPU (tools/gpu_session.sh)

Two phases in the same 2 processes: DP=2 (TP=1) runs off, overlapped DP communication
(parallel.overlap_grad_reduce + overlap_param_gather, --bucket-size parameters per bucket),
selective and full recompute; then TP=2 (DP=1) runs sequence parallelism off and on (where TP=2
does not divide the heads, e.g. SmolLM-360M's 15 / 5, the TP phase uses 16 / 4 heads of
hidden/16 channels: the same widths otherwise). Each variant builds its engine, takes one
warm-up step, one forward + backward under torch.profiler's memory accounting (the peak of net
allocation above what the engine holds: activations and temporaries; the optimizer step, the
same for every variant, is left out), what the engine holds (weights, grad buffers, optimizer
state), then --steps timed training steps; variants alternate over --rounds rounds and step
times are medians. Every rank reports; the table shows the maximum over ranks. --world 1 (one
GPU: NCCL takes one rank per device) runs the first phase's variants at DP=1 (overlap then only
exercises the hooks and buckets) and no TP phase. On a GPU the engine is bf16 and memory is
torch.cuda's allocator (peak allocated during the step above the allocated before it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time

DP_VARIANTS = {
    "off": {},
    "overlap": {"overlap_grad_reduce": True, "overlap_param_gather": True},
    "recompute selective": {"recompute": "selective"},
    "recompute full": {"recompute": "full"},
}
TP_VARIANTS = {"TP2 off": {}, "TP2 sequence parallel": {"sequence_parallel": True}}


def _batches(vocab: int, seq: int, micro: int, n: int, seed: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, vocab, (micro, seq + 1), generator=g)
        out.append(
            {
                "tokens": t[:, :-1],
                "labels": t[:, 1:],
                "loss_mask": torch.ones(micro, seq),
                "position_ids": torch.arange(seq).expand(micro, seq),
            }
        )
    return out


def _step_peak(fn) -> int:
    """Peak bytes allocated while `fn` runs, above what was allocated before it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from grow_megatron.bench.accounting import allocation_peak

    with allocation_peak() as mem:
        fn()
    return mem["peak"]


def _kept_after_forward(engine, batch) -> int:
    """Bytes still allocated after one micro-batch's forward (with autograd): what the model keeps
    for its backward (activations, the loss's softmax), above what was allocated before."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model = engine.model[0]
    if torch.cuda.is_available():
        batch = {k: v.cuda() for k, v in batch.items()}
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        out = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        torch.cuda.synchronize()
        kept = torch.cuda.memory_allocated() - before
    else:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        kept = sum(e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    del out
    return kept


def _phase(args, tp: int, variants: dict, rank: int) -> dict:
    import torch
    from megatron.core import parallel_state

    from grow_megatron.config.model import ModelConfig
    from grow_megatron.config.training import OptimConfig
    from grow_megatron.engine.build import ScaleOptions, build_engine, destroy_engine, run_microbatches, train_step
    from grow_megatron.engine.distributed import init_distributed
    from grow_megatron.engine.resolve import engine_spec

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    init_distributed(tp, 1, seed=0)
    heads, groups = args.heads, args.groups
    if heads % tp or groups % tp:
        heads, groups = 16, 4
    model = ModelConfig(
        num_layers=args.layers,
        hidden_size=args.hidden,
        ffn_hidden_size=args.ffn,
        num_attention_heads=heads,
        num_query_groups=groups,
        vocab_size=args.vocab,
        seq_length=args.seq,
    )
    dp_rank = parallel_state.get_data_parallel_rank()
    batches = _batches(args.vocab, args.seq, args.micro, args.microbatches, seed=dp_rank)
    rec = {name: {"step_s": []} for name in variants}
    for r in range(args.rounds):
        for name in variants if r % 2 == 0 else list(variants)[::-1]:
            kw = dict(variants[name])
            if kw.get("overlap_grad_reduce"):
                kw["bucket_size"] = args.bucket_size
            torch.manual_seed(0)
            spec = engine_spec(
                model,
                args.vocab,
                optim=OptimConfig(lr=1e-4, warmup_steps=0, decay_steps=0),
                tp=tp,
                bf16=torch.cuda.is_available(),
                scale=ScaleOptions(**kw),
            )
            e = build_engine(spec, args.layers)
            train_step(e, batches, 1e-4)  # warm-up: lazy buffers, DDP's first-step bookkeeping
            if r == 0:  # forward + backward: the optimizer's own temporaries are the same for all variants
                rec[name]["peak_bytes"] = _step_peak(lambda: run_microbatches(e, batches, forward_only=False))
                rec[name]["kept_bytes"] = _kept_after_forward(e, batches[0])
                rec[name]["held_bytes"] = sum(
                    t.numel() * t.element_size()
                    for m in e.model
                    for b in m.buffers
                    for t in (b.param_data, b.grad_data)
                    if t is not None
                ) + sum(
                    v.numel() * v.element_size()
                    for opt in getattr(e.optimizer, "chained_optimizers", [e.optimizer])
                    for st in opt.optimizer.state.values()
                    for v in st.values()
                    if torch.is_tensor(v)
                )
            for _ in range(args.steps):
                t0 = time.perf_counter()
                out = train_step(e, batches, 1e-4)
                rec[name]["step_s"].append(time.perf_counter() - t0)
            rec[name]["loss"] = out["loss"]
            destroy_engine(e)
            if rank == 0:
                print(f"  round {r} {name}: {statistics.median(rec[name]['step_s']):.2f}s/step", flush=True)
    return rec


def _worker(rank: int, world: int, port: int, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch

    torch.set_num_threads(args.threads)
    from grow_megatron.engine.distributed import device_context, shutdown_distributed

    with device_context():
        rec = {
            "dp": _phase(args, 1, DP_VARIANTS, rank),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
        if world == 2:
            rec["tp2"] = _phase(args, 2, TP_VARIANTS, rank)
        shutdown_distributed()
    with open(f"{args.out}.rank{rank}", "w") as f:
        json.dump(rec, f)


def _table(ranks: list[dict], args) -> tuple[str, list[dict]]:
    rows = []
    for phase, variants in (("dp", DP_VARIANTS), ("tp2", TP_VARIANTS)):
        if phase not in ranks[0]:
            continue
        for name in variants:
            per = [r[phase][name] for r in ranks]
            rows.append(
                {
                    "variant": name,
                    "layout": f"DP={len(ranks)}" if phase == "dp" else "TP=2",
                    "peak_activation_MiB": max(p["peak_bytes"] for p in per) / 2**20,
                    "held_MiB": max(p["held_bytes"] for p in per) / 2**20,
                    "kept_after_forward_MiB": max(p.get("kept_bytes", 0) for p in per) / 2**20,
                    "step_s_median": max(statistics.median(p["step_s"]) for p in per),
                    "loss": per[0]["loss"],
                    "device": ranks[0].get("device", "cpu"),
                }
            )
    lines = [
        "| layout | variant | kept for backward after one micro-batch's forward (MiB) | forward + backward: peak activations + temporaries per rank (MiB) | weights, grads, optimizer state per rank (MiB) | step time, median (s) | loss after the last step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['variant']} | {r['kept_after_forward_MiB']:.0f} | {r['peak_activation_MiB']:.0f} | "
            f"{r['held_MiB']:.0f} | {r['step_s_median']:.2f} | {r['loss']:.6f} |"
        )
    return "\n".join(lines), rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=960)
    p.add_argument("--ffn", type=int, default=2560)
    p.add_argument("--heads", type=int, default=15)
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--micro", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--microbatches", type=int, default=2, help="micro-batches per step on each rank")
    p.add_argument("--bucket-size", type=int, default=2_000_000, help="parameters per bucket with overlap")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--world", type=int, default=2, choices=(1, 2), help="ranks (1: one GPU, no TP phase)")
    p.add_argument("--out", default="runs/bench_scale.json")
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    t0 = time.time()
    procs = [ctx.Process(target=_worker, args=(r, args.world, port, args)) for r in range(args.world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        print(f"a rank failed: exit codes {[proc.exitcode for proc in procs]}", file=sys.stderr)
        return 1
    ranks = []
    for r in range(args.world):
        with open(f"{args.out}.rank{r}") as f:
            ranks.append(json.load(f))
        os.remove(f"{args.out}.rank{r}")
    table, rows = _table(ranks, args)
    print(table)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows, "ranks": ranks, "wall_s": time.time() - t0}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
