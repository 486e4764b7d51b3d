"""Growth-operation latency and memory: how long a growth takes and how much it holds at once.

Builds the engine at `--depth` for a preset's shape, runs one training step (so AdamW has
state to move), then grows by one block and reports the wall time of the growth and the peak
memory during it, next to the memory of the engine before and after. On GPU memory is
torch.cuda's allocator; on CPU it is the process RSS sampled every 5 ms (an upper bound that
includes the allocator's caching). `grow-megatron bench-growth` runs it; under torchrun for
multi-rank layouts.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import PRESETS, ModelConfig
from grow_megatron.config.options import cli
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.build import build_engine, destroy_engine, train_step
from grow_megatron.engine.distributed import device_context, init_distributed
from grow_megatron.engine.grow import grow
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import get_operator


class _PeakRSS:
    def __init__(self):
        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def __enter__(self):
        self.peak = self.rss()

        def poll():
            while not self.stop.is_set():
                self.peak = max(self.peak, self.rss())
                time.sleep(0.005)

        self.t = threading.Thread(target=poll, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()
        self.peak = max(self.peak, self.rss())


def _mem() -> int:
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated()
    return psutil.Process().memory_info().rss


def bench_one(
    preset: str,
    depth: int,
    block: int,
    operator: str,
    tp: int,
    pp: int,
    seq: int,
    micro_batch_size: int,
    host_staging: bool = False,
) -> dict:
    shape = {**PRESETS[preset], "num_layers": depth + block, "seq_length": seq}
    model = ModelConfig(**shape)
    V = model.vocab_size or 4096
    gpu = torch.cuda.is_available()
    spec = engine_spec(model, V, optim=OptimConfig(lr=1e-4, warmup_steps=0, decay_steps=0), bf16=gpu, tp=tp, pp=pp)
    e = build_engine(spec, depth)
    t = torch.randint(0, V, (micro_batch_size, seq + 1))
    mb = {
        "tokens": t[:, :-1],
        "labels": t[:, 1:],
        "loss_mask": torch.ones(micro_batch_size, seq),
        "position_ids": torch.arange(seq).expand(micro_batch_size, seq),
    }
    train_step(e, [mb], 1e-4)
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _mem()
    g = get_operator(operator)(depth, block)
    t0 = time.perf_counter()
    if gpu:
        e = grow(e, g, host_staging=host_staging)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        with _PeakRSS() as probe:
            e = grow(e, g, host_staging=host_staging)
        peak = probe.peak
    seconds = time.perf_counter() - t0
    after = _mem()
    params = sum(p.numel() for p in e.model[0].module.parameters())
    destroy_engine(e)
    del e
    # The next row's "before" and peak must not include this engine: megatron's buffers sit in
    # reference cycles that only the collector frees, and the allocator caches what it freed.
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return {
        "preset": preset,
        "old_depth": depth,
        "new_depth": depth + block,
        "operator": operator,
        "tp": tp,
        "pp": pp,
        "host_staged": host_staging,
        "params_after_local": params,
        "seconds": round(seconds, 3),
        "mem_before_gib": round(before / 2**30, 3),
        "mem_peak_gib": round(peak / 2**30, 3),
        "mem_after_gib": round(after / 2**30, 3),
        "device": torch.cuda.get_device_name() if gpu else "cpu",
    }


@dataclass
class GrowthBenchOptions:
    """What `grow-megatron bench-growth` measures."""

    preset: list[str] | None = field(default=None, metadata=cli(append=True))
    """model shape (repeatable; default smollm-360m)"""
    depth: list[int] | None = field(default=None, metadata=cli(append=True))
    """depth before the growth (repeatable; default 4, 8 and 16)"""
    block: int = 4
    """layers added by the growth (b)"""
    operator: str = "lidas"
    """growth operator"""
    seq: int = 256
    """sequence length of the training step before the growth"""
    mbs: int = 1
    """micro-batch size (sequences) of the training step before the growth"""
    staging: str = "off"
    """comma list of off,on: growth with the old engine kept on the device, or staged through host memory and
    freed first (growth.host_staging)"""
    out: str | None = None
    """JSON file for the results"""

    def validate(self) -> None:
        self.staging_modes()

    def staging_modes(self) -> list[bool]:
        """--staging as host_staging values, in the given order."""
        modes = [m.strip() for m in self.staging.split(",")]
        if any(m not in ("off", "on") for m in modes):
            raise ConfigError("--staging", self.staging, "must be a comma list of off and on")
        return [m == "on" for m in modes]


def run(opts: GrowthBenchOptions) -> list[dict]:
    """One row per (preset, depth, staging); printed and (with opts.out) saved as each one is done.
    TP and PP come from GM_TP and GM_PP (torchrun sets the world)."""
    tp = int(os.environ.get("GM_TP", "1"))
    pp = int(os.environ.get("GM_PP", "1"))
    rows: list[dict] = []
    with device_context():
        lay = init_distributed(tp, pp, seed=0)
        for preset in opts.preset or ["smollm-360m"]:
            for depth, staging in [(d, s) for d in opts.depth or [4, 8, 16] for s in opts.staging_modes()]:
                rows.append(
                    bench_one(
                        preset, depth, opts.block, opts.operator, tp, pp, opts.seq, opts.mbs, host_staging=staging
                    )
                )
                if opts.out and lay.rank == 0:  # a run stopped by a time limit keeps the rows it has
                    _write(opts.out, rows)
                if lay.rank == 0:
                    r = rows[-1]
                    print(
                        f"{r['preset']:>12} {r['old_depth']:>3}->{r['new_depth']:<3} TPxPP={tp}x{pp} "
                        f"{'host-staged' if r['host_staged'] else 'live':>11} "
                        f"{r['seconds']:>8.2f} s  mem before {r['mem_before_gib']:.2f} GiB, "
                        f"peak {r['mem_peak_gib']:.2f} GiB, after {r['mem_after_gib']:.2f} GiB ({r['device']})",
                        flush=True,
                    )
    return rows


def _write(path: str, rows: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)
