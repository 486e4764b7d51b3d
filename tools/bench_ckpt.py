#!/usr/bin/env python
"""Checkpoint and growth cost per rank, old design vs new, in one run (CPU, gloo ranks).

    python tools/bench_ckpt.py --layers 8 --out runs/bench_ckpt          # SmolLM-360M widths
    python tools/bench_ckpt.py --layers 2 --hidden 64 --ffn 160 --heads 4 --groups 2 --vocab 256  # quick
    python tools/bench_ckpt.py --stall --layers 4 --hidden 960 --ffn 2560 --heads 15 --groups 5  # async vs sync

For each layout (DP=1, 2, 4 and TP2 x DP2) and each design, fresh processes build the engine
at half depth, grow it (LIDAS) to full depth, save a checkpoint and load it into a fresh
engine, recording per rank: bytes sent by torch.distributed calls (count_comm: tensor bytes
of collectives and P2P, pickled bytes of object collectives) during the growth and the save,
the peak of tensor memory allocated during the save and the load above what was allocated
before (allocation_peak), bytes of .distcp files the rank wrote, and wall times.
"old" runs the package as it was at --old-rev (extracted with `git archive`), "new" this tree.
Optimizer state is initialised without training (values do not change any of these costs); an
unmeasured save of a small engine first starts megatron's writer machinery in each process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"DP1": (1, 1), "DP2": (2, 1), "DP4": (4, 1), "TP2xDP2": (4, 2)}  # name: (world, tp)


def _accounting():
    """grow_megatron.bench.accounting of this tree, also when the old package is on the path."""
    spec = importlib.util.spec_from_file_location(
        "accounting", os.path.join(ROOT, "grow_megatron", "bench", "accounting.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from grow_megatron.config.model import ModelConfig
    from grow_megatron.engine.build import build_engine
    from grow_megatron.engine.checkpoint import ensure_state_initialized, load_checkpoint, save_checkpoint
    from grow_megatron.engine.distributed import device_context, init_distributed
    from grow_megatron.engine.grow import grow
    from grow_megatron.engine.resolve import engine_spec
    from grow_megatron.growth.operators import lidas

    acc = _accounting()
    torch.set_num_threads(1)
    rec = {}
    with device_context():
        init_distributed(args.tp, 1, seed=0)
        rank = dist.get_rank()
        model = ModelConfig(
            num_layers=args.layers,
            hidden_size=args.hidden,
            ffn_hidden_size=args.ffn,
            num_attention_heads=args.heads,
            num_query_groups=args.groups,
            vocab_size=args.vocab,
            seq_length=128,
        )
        spec = engine_spec(model, args.vocab, tp=args.tp)
        half = args.layers // 2
        e = build_engine(spec, half)
        ensure_state_initialized(e.optimizer)
        dist.barrier()
        with acc.count_comm() as comm:
            t0 = time.perf_counter()
            e = grow(e, lidas(half, args.layers - half))
            dist.barrier()
            rec["grow_s"] = time.perf_counter() - t0
        rec["grow_tensor_bytes"] = acc.tensor_bytes(comm)
        rec["grow_calls"] = sum(v for k, v in comm.items() if k.endswith("#calls"))
        rec["slice_params"] = sum(p.numel() for p in e.chunks[0].parameters())
        if args.growth_only:
            with open(os.path.join(args.dir, f"rank{rank}.json"), "w") as f:
                json.dump(rec, f)
            return
        root = os.path.join(args.dir, "ckpt")
        # The first save of a process starts megatron's writer machinery (the same for both
        # designs, seconds on a busy CPU): a small engine's save takes it out of the timings.
        small = ModelConfig(
            num_layers=2,
            hidden_size=64,
            ffn_hidden_size=128,
            num_attention_heads=4,
            num_query_groups=2,
            vocab_size=128,
            seq_length=128,
        )
        w = build_engine(engine_spec(small, 128, tp=args.tp), 2)
        ensure_state_initialized(w.optimizer)
        save_checkpoint(w, os.path.join(args.dir, "warmup"), 0, {})
        del w
        dist.barrier()
        with acc.count_comm() as comm, acc.allocation_peak() as mem:
            t0 = time.perf_counter()
            ckpt = save_checkpoint(e, root, 1, {})
            rec["save_s"] = time.perf_counter() - t0
        rec["save_peak"] = mem["peak"]
        rec["save_tensor_bytes"] = acc.tensor_bytes(comm)
        rec["save_object_bytes"] = sum(v for k, v in comm.items() if "object" in k and not k.endswith("#calls"))
        rec["written"] = sum(
            os.path.getsize(os.path.join(ckpt, f))
            for f in os.listdir(ckpt)
            if f.startswith(f"__{rank}_") and f.endswith(".distcp")
        )
        e2 = build_engine(spec, args.layers, init_weights=False)
        del e
        dist.barrier()
        with acc.count_comm() as comm, acc.allocation_peak() as mem:
            t0 = time.perf_counter()
            load_checkpoint(e2, ckpt)
            dist.barrier()
            rec["load_s"] = time.perf_counter() - t0
        rec["load_peak"] = mem["peak"]
        rec["load_tensor_bytes"] = acc.tensor_bytes(comm)
    with open(os.path.join(args.dir, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f)


def run_one(variant_path: str, world: int, tp: int, args, workdir: str) -> list[dict]:
    os.makedirs(workdir, exist_ok=True)
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(29500 + os.getpid() % 1000 + world + tp),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
        PYTHONPATH=variant_path,
    )
    shape = {k: getattr(args, k) for k in ("layers", "hidden", "ffn", "heads", "groups", "vocab")}
    if shape["heads"] % tp or shape["groups"] % tp:  # SmolLM-360M's 15 heads / 5 groups do not split over TP=2
        shape.update(heads=16, groups=4)
    cmd = (
        [sys.executable, os.path.abspath(__file__), "--worker", "--dir", workdir, "--tp", str(tp)]
        + [f"--{k}={v}" for k, v in shape.items()]
        + (["--growth-only"] if args.growth_only else [])
    )
    procs = [
        subprocess.Popen(
            cmd,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(workdir, f"stderr{r}.txt"), "w"),
        )
        for r in range(world)
    ]
    if any([p.wait() != 0 for p in procs]):
        tails = [open(os.path.join(workdir, f"stderr{r}.txt")).read()[-2000:] for r in range(world)]
        raise RuntimeError(f"a rank failed (exit codes {[p.returncode for p in procs]}):\n" + "\n".join(tails))
    out = [json.load(open(os.path.join(workdir, f"rank{r}.json"))) for r in range(world)]
    for d in ("ckpt", "warmup"):
        shutil.rmtree(os.path.join(workdir, d), ignore_errors=True)
    return out


def table(results: dict) -> str:
    mb = 1e6
    rows = [
        "| layout | design | save: added memory / rank (max, MB) | save: tensor bytes sent / rank (MB) | "
        "written / rank (max, MB) | save s | load: added memory (max, MB) | load s | growth: bytes sent / rank "
        "(MB) | growth: calls / rank | growth s |",
        "|" + "---|" * 11,
    ]
    for layout, by_design in results.items():
        for design, ranks in by_design.items():
            mx = lambda k: max(r[k] for r in ranks)  # noqa: E731
            rows.append(
                f"| {layout} | {design} | {mx('save_peak') / mb:.0f} | {mx('save_tensor_bytes') / mb:.1f} | "
                f"{mx('written') / mb:.0f} | {mx('save_s'):.2f} | {mx('load_peak') / mb:.0f} | "
                f"{mx('load_s'):.2f} | {mx('grow_tensor_bytes') / mb:.0f} | {mx('grow_calls')} | "
                f"{mx('grow_s'):.2f} |"
            )
    return "\n".join(rows)


def growth_table(results: dict) -> str:
    mb = 1e6
    rows = [
        "| layout | design | growth: bytes sent / rank (max, MB) | growth: calls / rank (max) | growth s (max) | "
        "slice (params) |",
        "|" + "---|" * 6,
    ]
    for layout, by_design in results.items():
        for design, ranks in by_design.items():
            mx = lambda k: max(r[k] for r in ranks)  # noqa: E731
            rows.append(
                f"| {layout} | {design} | {mx('grow_tensor_bytes') / mb:.1f} | {mx('grow_calls')} | "
                f"{mx('grow_s'):.2f} | {mx('slice_params')} |"
            )
    return "\n".join(rows)


# Projection (docs/benchmarks.md): (name, params N, layers L, TP, PP) and the GPU counts.
PROJECTED = (("7B", 6.74e9, 32, 2, 1), ("70B", 69.0e9, 80, 8, 4))
GPUS = (64, 128, 256, 512)
STATE, WEIGHT = 12, 2  # bytes per parameter: fp32 main copy + 2 AdamW moments; bf16 weights


def projection() -> str:
    """Per-rank checkpoint and growth costs from the designs' formulas, for a rank's slice of
    S = N / (TP x PP) parameters and DP = GPUs / (TP x PP):
      old save: device memory 12 S (gathered state), all-reduce 2 (DP-1)/DP x 12 S sent,
                DP rank 0 writes 14 S, the others nothing;
      new save: device memory 0 (views; the writer stages its 14 S / DP in host memory), nothing
                sent, every rank writes 14 S / DP;
      growth (every parameter of the grown slice is rewritten): before, every rank
                all-reduced each layer's whole state, 2 (DP-1)/DP x 12 S sent; by ownership a
                rank sends at most its old ranges, 12 S / DP (what it keeps locally is less;
                measured at DP=4 the largest rank sent exactly that), plus, under PP, the
                weights and ranges of the layers that change stage (a few layers per growth)."""
    gb = 1e9
    rows = [
        "| model | GPUs | TP x PP x DP | slice S | save: device memory old / new (GB) | save: sent old / new "
        "(GB) | written per rank old (rank 0) / new (GB) | growth: sent per rank, all-reduce / by ownership (GB) |",
        "|" + "---|" * 8,
    ]
    for name, n, _, tp, pp in PROJECTED:
        for g in GPUS:
            dp = g // (tp * pp)
            if dp < 1:
                continue
            sl = n / (tp * pp)
            rows.append(
                f"| {name} | {g} | {tp} x {pp} x {dp} | {sl / 1e9:.2f}B | {STATE * sl / gb:.1f} / 0 | "
                f"{2 * (dp - 1) / dp * STATE * sl / gb:.1f} / 0 | {(STATE + WEIGHT) * sl / gb:.1f} / "
                f"{(STATE + WEIGHT) * sl / dp / gb:.2f} | {2 * (dp - 1) / dp * STATE * sl / gb:.1f} / "
                f"{STATE * sl / dp / gb:.2f} |"
            )
    return "\n".join(rows)


def _blocking_seconds(profile) -> float:
    """Time the training thread spent inside checkpoint code: CheckpointWriter's save, and its
    poll and wait where the loop calls them (a save's own wait for the previous one is the
    strategy's, counted inside the save)."""
    import pstats

    writer = os.path.join("engine", "checkpoint", "writer.py")
    return sum(
        cum
        for (path, _, func), (_, _, _, cum, _) in pstats.Stats(profile).stats.items()
        if path.endswith(writer) and func in ("save", "poll", "wait")
    )


def stall(args) -> str:
    """What a periodic save costs the training loop, checkpoint.async_save off vs on, in one
    process, two ways: *blocking*, the time the training thread spends in checkpoint code
    (cProfile of the main thread; the writer process is not in it), per save; *wall*, the loop's
    wall time (first step end to the end of `train`) with saves every --stall-interval steps
    minus the same run without periodic saves, per save, which adds whatever the background
    writer takes from the training process's cores (on a shared 2-core machine, a lot). The
    interval should leave the writer time to finish, or the next save waits for it. `blocking`
    is profiled from the first step's end to the last's, so it leaves out the final
    (always synchronous) save; the steps after the last periodic save let its writer finish
    and be published inside that window."""
    import cProfile

    from grow_megatron.config.run import load_run_config
    from grow_megatron.training.loop import train

    wall, blocking = {}, {}
    n_saves = (args.stall_steps - 1) // args.stall_interval
    for mode in ("none", "off", "on"):
        run = tempfile.mkdtemp(prefix=f"stall_{mode}_")
        cfg = load_run_config(
            None,
            [
                f"run_dir={run}",
                "model.preset=tiny",
                f"model.num_layers={args.layers}",
                f"model.hidden_size={args.hidden}",
                f"model.ffn_hidden_size={args.ffn}",
                f"model.num_attention_heads={args.heads}",
                f"model.num_query_groups={args.groups}",
                "model.seq_length=64",
                "growth.operator=none",
                f"train.steps={args.stall_steps}",
                "train.global_batch_size=2",
                "train.micro_batch_size=2",
                "train.eval_interval=0",
                "optim.warmup_steps=1",
                "optim.decay_steps=1",
                "logging.progress=false",
                "logging.tensorboard=false",
                f"checkpoint.interval={0 if mode == 'none' else args.stall_interval}",
                "checkpoint.keep_last=2",
                f"checkpoint.async_save={'off' if mode == 'none' else mode}",
            ],
        )
        ends = []
        profile = cProfile.Profile()

        def on_step(engine, step, rec):
            ends.append(time.perf_counter())
            if step == 0:
                profile.enable()
            elif step == args.stall_steps - 1:
                profile.disable()

        train(cfg, on_step=on_step)
        wall[mode] = time.perf_counter() - ends[0]
        blocking[mode] = _blocking_seconds(profile)
        shutil.rmtree(run, ignore_errors=True)
    per_step = wall["none"] / (args.stall_steps - 1)
    w_sync, w_async = ((wall[m] - wall["none"]) / n_saves for m in ("off", "on"))
    b_sync, b_async = (blocking[m] / n_saves for m in ("off", "on"))
    return (
        f"| step (mean) | saves | blocking per save, sync | blocking per save, async | async / sync (blocking) "
        f"| wall per save, sync | wall per save, async | async / sync (wall) |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        f"| {per_step:.3f} s | {n_saves} | {b_sync:.3f} s | {b_async:.3f} s | {b_async / b_sync:.2f} "
        f"| {w_sync:.3f} s | {w_async:.3f} s | {w_async / w_sync:.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=960)
    ap.add_argument("--ffn", type=int, default=2560)
    ap.add_argument("--heads", type=int, default=15)
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {', '.join(LAYOUTS)}")
    ap.add_argument(
        "--old-rev",
        default="633735b",
        help="git revision of the old design; one with engine/ (2115e50 or later: the workers import "
        "its API); for an older one, run the script as it was then (git show REV:tools/bench_ckpt.py)",
    )
    ap.add_argument("--out", default=None, help="directory for results.json and table.md")
    ap.add_argument("--project", action="store_true", help="print the 7B / 70B projection table and exit")
    ap.add_argument("--stall", action="store_true", help="measure the step stall of sync vs async saves and exit")
    ap.add_argument("--stall-steps", type=int, default=35)
    ap.add_argument("--stall-interval", type=int, default=5, help="steps between saves in --stall")
    ap.add_argument(
        "--growth-only",
        action="store_true",
        help="measure only the growth (bytes, calls, seconds per rank); e.g. with --old-rev of the "
        "executor that all-reduced whole layers",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.project:
        print(projection())
        return
    if args.stall:
        print(stall(args))
        return
    layouts = args.layouts.split(",")
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown:
        sys.exit(f"--layouts: unknown {unknown}; use some of {', '.join(LAYOUTS)}")
    tmp = tempfile.mkdtemp(prefix="bench_ckpt_")
    old = os.path.join(tmp, "old")
    os.makedirs(old)
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", args.old_rev, "grow_megatron"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
    if not os.path.isfile(os.path.join(old, "grow_megatron", "engine", "build.py")):
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(
            f"--old-rev {args.old_rev}: that tree predates grow_megatron/engine/, whose API this script's "
            f"workers import; use a revision from 2115e50 on, or run that revision's own script "
            f"(git show {args.old_rev}:tools/bench_ckpt.py)"
        )
    results: dict = {}
    try:
        for layout in layouts:
            world, tp = LAYOUTS[layout]
            for design, path in (("old", old), ("new", ROOT)):
                t0 = time.perf_counter()
                results.setdefault(layout, {})[design] = run_one(
                    path, world, tp, args, os.path.join(tmp, layout, design)
                )
                print(f"{layout} {design}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
                if args.out:  # kept as it comes: a later layout may run out of memory
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, "results.json"), "w") as f:
                        json.dump(
                            {
                                "args": {k: v for k, v in vars(args).items() if k not in ("worker", "dir")},
                                "results": results,
                            },
                            f,
                            indent=1,
                        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = growth_table(results) if args.growth_only else table(results)
    print(md)
    if args.out:
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
