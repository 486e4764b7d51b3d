"""The training loop: steps, growth at stage boundaries, evaluation, metrics, checkpoints."""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from megatron.core import parallel_state

from grow_megatron.config.base import ConfigError
from grow_megatron.config.run import RunConfig, dump_run_config
from grow_megatron.growth.manager import grow, needs_host_staging
from grow_megatron.growth.schedule import plan_from_config
from grow_megatron.training.async_save import AsyncSaver
from grow_megatron.training.checkpoint import latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from grow_megatron.training.distributed import Layout, device_context, init_distributed
from grow_megatron.training.engine import Engine, EngineSpec, build_engine, eval_loss, train_step
from grow_megatron.training.lr import lr_at
from grow_megatron.training.metrics import MetricsWriter


def padded_vocab(vocab: int, tp: int) -> int:
    """Vocabulary rounded up so that every TP rank holds an equal slice (unchanged if it divides)."""
    return vocab if vocab % tp == 0 else math.ceil(vocab / (128 * tp)) * 128 * tp


@dataclass
class TrainResult:
    losses: dict[int, float] = field(default_factory=dict)
    """Training loss of every step run in this call, by global step."""
    eval_losses: dict[int, float] = field(default_factory=dict)
    growths: list[dict] = field(default_factory=list)
    start_step: int = 0
    end_step: int = 0
    final_depth: int = 0
    run_dir: str = ""


@contextlib.contextmanager
def _graceful_interrupt():
    """First Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, `kill`): finish the running
    step, checkpoint, return. A second one: abort at once.

    An interrupt inside optimizer.step() would leave weights and moments half-updated, so the
    loop only stops between steps."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: flag["hit"]
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def train(cfg: RunConfig, *, stop_at: Optional[int] = None,
          on_step: Optional[Callable[[Engine, int, dict], None]] = None) -> TrainResult:
    """Run (or resume) training; `stop_at` stops after that many global steps, checkpointing
    there as a preemption would (used by tests and by Ctrl-C)."""
    with device_context():
        return _train(cfg, stop_at=stop_at, on_step=on_step)


def _train(cfg: RunConfig, *, stop_at: Optional[int], on_step) -> TrainResult:
    from grow_megatron.data import build_datasets, build_tokenizer, get_microbatches

    layout: Layout = init_distributed(cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel, cfg.train.seed,
                                      vpp=cfg.parallel.virtual_stages)
    cfg.validate(layout.world)
    rank0 = layout.is_logging_rank
    on_gpu = torch.cuda.is_available()
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and on_gpu)
    use_kernels = cfg.model.kernels == "on" or (cfg.model.kernels == "auto" and on_gpu)
    if use_kernels:
        from grow_megatron.kernels import triton_available

        if not triton_available("cuda" if on_gpu else "cpu"):
            raise ConfigError("model.kernels", cfg.model.kernels,
                              "the Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 to run them, slowly, in "
                              "Triton's interpreter on CPU); use model.kernels=auto or off")

    tokenizer = build_tokenizer(cfg.data)
    vocab = padded_vocab(cfg.model.vocab_size or tokenizer.vocab_size, layout.tp)
    plan = plan_from_config(cfg)
    tc = cfg.train
    dp_rank = parallel_state.get_data_parallel_rank()
    valid_samples = tc.eval_batches * tc.micro_batch_size * layout.dp if tc.eval_interval else 0
    train_ds, valid_ds = build_datasets(cfg.data, seq_length=cfg.model.seq_length, seed=tc.seed,
                                        train_samples=tc.steps * tc.global_batch_size,
                                        valid_samples=valid_samples, tokenizer=tokenizer, progress=rank0)

    spec = EngineSpec(cfg.model, cfg.optim, vocab, bf16=bf16, use_kernels=use_kernels,
                      tp=layout.tp, pp=layout.pp, vpp=cfg.parallel.virtual_stages,
                      final_split=tuple(cfg.parallel.pipeline_split) if cfg.parallel.pipeline_split else None,
                      seed=tc.seed)
    ckpt_root = os.path.join(cfg.run_dir, "checkpoints")
    resume_from = latest_checkpoint(ckpt_root) if cfg.checkpoint.resume == "auto" else None
    start, history = 0, []
    torch.manual_seed(tc.seed)
    if resume_from:
        meta = read_meta(resume_from)
        start, history = meta["step"], meta.get("growths", [])
        if meta["depth"] != plan.depth_at(start) and not (start in plan.boundaries and meta["depth"] == plan.depth_at(start - 1)):
            raise ConfigError("checkpoint.resume", resume_from,
                              f"holds depth {meta['depth']} at step {start}, but this config's growth plan gives depth "
                              f"{plan.depth_at(start)} there: resume with the config it was trained with "
                              f"({os.path.join(cfg.run_dir, 'config.yaml')}), use another run_dir, or set "
                              f"checkpoint.resume=never")
        engine = build_engine(spec, meta["depth"], init_weights=False)
        load_checkpoint(engine, resume_from)
    else:
        engine = build_engine(spec, plan.initial_depth)

    result = TrainResult(start_step=start, run_dir=cfg.run_dir, growths=list(history))
    tokens_per_step = tc.global_batch_size * cfg.model.seq_length
    metrics = MetricsWriter(cfg.run_dir, enabled=rank0, tensorboard=cfg.logging.tensorboard, resume_step=start)
    if rank0:
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
            f.write(dump_run_config(cfg))
        metrics.note(f"{cfg.name}: {'resuming from ' + resume_from if resume_from else 'starting'} at step {start}, "
                     f"depth {engine.depth}, {layout.world} rank(s) (TP={layout.tp} PP={layout.pp}"
                     f"{f' x {spec.vpp} virtual' if spec.vpp > 1 else ''} DP={layout.dp}), "
                     f"{'bf16' if bf16 else 'fp32'}, kernels {'on' if use_kernels else 'off'}, vocab {vocab}")
        if plan.growths:
            metrics.note(f"growth plan ({cfg.growth.operator}, b={cfg.growth.block_size}): stage steps "
                         f"{list(plan.stage_steps)}, growths at steps {list(plan.boundaries)}")

    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    meta = lambda: {"growths": result.growths, "name": cfg.name, "stage_steps": list(plan.stage_steps),  # noqa: E731
                    "operator": cfg.growth.operator}
    growth_ckpts: set[str] = set()
    pbar = metrics.progress(total=tc.steps, initial=start, enabled=cfg.logging.progress)
    step = start
    saver = AsyncSaver() if cfg.checkpoint.async_save == "on" else None
    with _graceful_interrupt() as interrupted:
        for step in range(start, end):
            if saver is not None:
                saver.poll()  # publishes a finished async save (all ranks, same steps)
            if interrupted():
                metrics.note(f"interrupted: stopping cleanly at step {step} (press Ctrl-C again to abort)")
                end = step
                break
            target = plan.depth_at(step)
            while engine.depth < target:
                g = next(g for g in plan.growths if g.old_depth == engine.depth)
                if cfg.checkpoint.save_at_growth:
                    d = save_checkpoint(engine, ckpt_root, step, meta(), keep=growth_ckpts, saver=saver)
                    growth_ckpts.add(os.path.basename(d))
                t0 = time.perf_counter()
                staged = needs_host_staging(engine, g, cfg.growth.host_staging)
                engine = grow(engine, g, host_staging=staged)
                event = {"step": step, "seconds": round(time.perf_counter() - t0, 4), **g.to_dict(),
                         "pipeline_split": list(engine.split), "host_staged": staged}
                result.growths.append(event)
                metrics.note(f"growth at step {step}: depth {g.old_depth} -> {g.new_depth} ({g.operator}), "
                             f"source map {list(g.source_map)}, {event['seconds']:.2f}s")
                metrics.event(step, "growth", event)
            t0 = time.perf_counter()
            mbs = get_microbatches(train_ds, step=step, global_batch_size=tc.global_batch_size,
                                   micro_batch_size=tc.micro_batch_size, dp_rank=dp_rank, dp_size=layout.dp)
            out = train_step(engine, mbs, lr_at(step, cfg.optim, tc.steps))
            dt = time.perf_counter() - t0
            rec = {"step": step, **out, "depth": engine.depth, "tokens_per_s": tokens_per_step / dt, "step_s": dt}
            if not math.isfinite(out["loss"]):
                raise FloatingPointError(f"loss is {out['loss']} at step {step} (lr {out['lr']:.3g}): lower optim.lr "
                                         f"or raise optim.warmup_steps; the last checkpoint is in {ckpt_root}")
            result.losses[step] = out["loss"]
            done = step + 1
            if tc.eval_interval and valid_ds is not None and (done % tc.eval_interval == 0 or done == tc.steps):
                vmbs = [mb for i in range(tc.eval_batches) for mb in get_microbatches(
                    valid_ds, step=i, global_batch_size=tc.micro_batch_size * layout.dp,
                    micro_batch_size=tc.micro_batch_size, dp_rank=dp_rank, dp_size=layout.dp)]
                rec["val_loss"] = eval_loss(engine, vmbs)
                result.eval_losses[step] = rec["val_loss"]
            if done % tc.log_interval == 0 or "val_loss" in rec:
                metrics.log(rec)
            pbar.update(rec)
            if on_step is not None:
                on_step(engine, step, rec)
            if cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0 and done < end:
                save_checkpoint(engine, ckpt_root, done, meta(), keep=growth_ckpts, keep_last=cfg.checkpoint.keep_last,
                                saver=saver)
    pbar.close()
    if saver is not None:  # the final save (and a stop) waits for the one in flight
        saver.wait()
    result.end_step = end
    result.final_depth = engine.depth
    save_checkpoint(engine, ckpt_root, end, meta(), keep=growth_ckpts, keep_last=cfg.checkpoint.keep_last)
    metrics.close(plot=end == tc.steps)
    return result
