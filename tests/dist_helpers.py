"""Run a training config on several CPU ranks (gloo), as torchrun would, from inside a test."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import traceback

from grow_megatron.engine.distributed import free_port


def _train(rank: int, world: int, overrides: list[str], out_dir: str, stop_at) -> None:
    from grow_megatron.config.run import load_run_config
    from grow_megatron.engine.distributed import shutdown_distributed
    from grow_megatron.training.loop import train

    cfg = load_run_config(None, overrides, world_size=world)
    res = train(cfg, stop_at=stop_at)
    if rank == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump(
                {
                    "losses": {str(k): v for k, v in res.losses.items()},
                    "growths": [g.to_dict() for g in res.growths],
                    "final_depth": res.final_depth,
                    "start": res.start_step,
                    "end": res.end_step,
                },
                f,
            )
    shutdown_distributed()


def run_world(world: int, overrides: list[str], out_dir: str, stop_at=None, timeout: float = 600) -> dict:
    """Train on `world` ranks in fresh processes; returns rank 0's result (losses by step)."""
    run_ranks(world, _train, world, overrides, out_dir, stop_at, out_dir=out_dir, timeout=timeout)
    with open(os.path.join(out_dir, "result.json")) as f:
        res = json.load(f)
    res["losses"] = {int(k): v for k, v in res["losses"].items()}
    return res


def _fn_worker(rank: int, world: int, port: int, fn, args, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    try:
        import torch

        torch.set_num_threads(1)
        fn(rank, *args)
    except BaseException:
        with open(os.path.join(out_dir, f"error_rank{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


def run_ranks(world: int, fn, *args, out_dir: str, timeout: float = 300) -> None:
    """Call the module-level function fn(rank, *args) in `world` fresh gloo-ready processes."""
    os.makedirs(out_dir, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_fn_worker, args=(r, world, port, fn, args, out_dir)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = [open(os.path.join(out_dir, f)).read() for f in sorted(os.listdir(out_dir)) if f.startswith("error_")]
    if errors or any(p.exitcode != 0 for p in procs):
        raise RuntimeError(
            f"{world}-rank call failed (exit codes {[p.exitcode for p in procs]}):\n" + "\n".join(errors)
        )
