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


def _fn_worker(rank: int, world: int, port: int, fn, args, out_dir: str, env: dict, cwd: str) -> None:
    # A forkserver child starts with the server's environment and directory, not the test's
    # (a fault armed with monkeypatch.setenv, a chdir): take the caller's.
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
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


PRELOAD = ["grow_megatron.training.loop", "grow_megatron.convert.api", "pytest"]
"""Imported once by the forkserver: torch and megatron-core take about 6 s of CPU to import,
which a rank started by `spawn` pays again (8 ranks on 2 cores: about 25 s of a test)."""


def _context():
    """Fresh processes forked from a server that has imported PRELOAD and run nothing else (no
    process group, no OpenMP pool), so a rank starts as clean as a spawned one, without its
    imports."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_ranks(world: int, fn, *args, out_dir: str, timeout: float = 300) -> None:
    """Call the module-level function fn(rank, *args) in `world` fresh gloo-ready processes."""
    os.makedirs(out_dir, exist_ok=True)
    ctx = _context()
    port = free_port()
    env, cwd = dict(os.environ), os.getcwd()
    procs = [ctx.Process(target=_fn_worker, args=(r, world, port, fn, args, out_dir, env, cwd)) for r in range(world)]
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
