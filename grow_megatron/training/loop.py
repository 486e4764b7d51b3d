"""The training loop: steps, growth at stage boundaries, evaluation, metrics, checkpoints."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from megatron.core import parallel_state

from grow_megatron.config.base import ConfigError, check_output_dir
from grow_megatron.config.model import padded_vocab
from grow_megatron.config.run import RunConfig, dump_run_config
from grow_megatron.engine.grow import grow, needs_host_staging
from grow_megatron.growth.schedule import plan_from_config
from grow_megatron.model.looping import LoopSchedule
from grow_megatron.engine.async_save import AsyncSaver
from grow_megatron.engine.checkpoint import (latest_checkpoint, load_checkpoint, prepare_run_dir, read_meta,
                                               save_checkpoint)
from grow_megatron.engine.distributed import Layout, device_context, init_distributed
from grow_megatron.engine.build import Engine, EngineSpec, build_engine, eval_loss, poison_gradients, train_step
from grow_megatron.engine.faults import fault_point
from grow_megatron.training.history import ComputeCount, continued_plan, lr_schedule, plan_note
from grow_megatron.training.memory import check_fits
from grow_megatron.training.metrics import MetricsWriter
from grow_megatron.engine.optim_state import nonfinite_state
from grow_megatron.training.run_lock import run_dir_lock

FAULT_NAN_GRAD_STEP = "GROW_MEGATRON_FAULT_NAN_GRAD_STEP"
"""Fault injection (tests): the global step whose gradients are made NaN before the update."""


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


def _wandb_settings(cfg: RunConfig) -> Optional[dict]:
    """MetricsWriter's W&B settings, or None when logging.wandb is off."""
    if not cfg.logging.wandb:
        return None
    from grow_megatron.config.base import to_dict

    return {"project": cfg.logging.wandb_project, "name": cfg.logging.wandb_name or cfg.name, "config": to_dict(cfg)}


@contextlib.contextmanager
def _graceful_interrupt():
    """First Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, `kill`): finish the running
    step, checkpoint, return. A second Ctrl-C: abort at once. Further SIGTERMs change nothing:
    a group signal reaches a torchrun worker twice (from the sender, then forwarded by the agent).

    An interrupt inside optimizer.step() would leave weights and moments half-updated, so the
    loop only stops between steps; with several ranks they agree on the step (a signal can land
    on either side of one rank's check), so all of them reach the final save together."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if flag["hit"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["hit"] = True

    def interrupted() -> bool:
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
            return flag["hit"]
        hit = torch.tensor([float(flag["hit"])], device="cuda" if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(hit, op=torch.distributed.ReduceOp.MAX)
        return bool(hit.item())

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _last_good(ckpt_root: str) -> str:
    last = latest_checkpoint(ckpt_root)
    return (f"the last good checkpoint is {last} (running again resumes from it)" if last
            else "no checkpoint was written yet (running again starts from step 0)")


def train(cfg: RunConfig, *, stop_at: Optional[int] = None,
          on_step: Optional[Callable[[Engine, int, dict], None]] = None) -> TrainResult:
    """Run (or resume) training; `stop_at` stops after that many global steps, checkpointing
    there as a preemption would (used by tests and by Ctrl-C)."""
    # Before anything is set up or written: a run_dir that is a file fails here, not after the
    # data is prepared; a run_dir another trainer uses is refused before its files are touched.
    check_output_dir(cfg.run_dir, "run_dir")
    plan_from_config(cfg)  # an unrunnable plan is one line here, before the run_dir is touched
    with run_dir_lock(cfg.run_dir), device_context():
        return _train(cfg, stop_at=stop_at, on_step=on_step)


def _train(cfg: RunConfig, *, stop_at: Optional[int], on_step) -> TrainResult:
    from grow_megatron.data import build_datasets, build_tokenizer, get_microbatches
    from grow_megatron.data.datasets import describe_data

    layout: Layout = init_distributed(cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel, cfg.train.seed,
                                      vpp=cfg.parallel.virtual_stages)
    cfg.validate(layout.world)
    prepare_run_dir(cfg.run_dir, cfg.checkpoint.resume)
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
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError("model.vocab_size", cfg.model.vocab_size,
                          f"is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}, {tokenizer.source}), so "
                          f"its token ids would index past the embedding: leave it empty to take the tokenizer's, or "
                          f"set it >= {tokenizer.vocab_size}")
    vocab = padded_vocab(cfg.model.vocab_size or tokenizer.vocab_size, layout.tp)
    check_fits(cfg, vocab, layout.tp, layout.pp, layout.dp, bf16)
    plan = plan_from_config(cfg)
    tc = cfg.train
    dp_rank = parallel_state.get_data_parallel_rank()
    valid_samples = tc.eval_batches * tc.micro_batch_size * layout.dp if tc.eval_interval else 0
    train_ds, valid_ds = build_datasets(cfg.data, seq_length=cfg.model.seq_length, seed=tc.seed,
                                        train_samples=tc.steps * tc.global_batch_size,
                                        valid_samples=valid_samples, tokenizer=tokenizer,
                                        # A tokenizing bar in a redirected log is one \r-joined line.
                                        progress=rank0 and sys.stderr.isatty(),
                                        batch_tokens=tc.global_batch_size * cfg.model.seq_length)

    spec = EngineSpec(cfg.model, cfg.optim, vocab, bf16=bf16, use_kernels=use_kernels,
                      tp=layout.tp, pp=layout.pp, vpp=cfg.parallel.virtual_stages,
                      final_split=tuple(cfg.parallel.pipeline_split) if cfg.parallel.pipeline_split else None,
                      seed=tc.seed)
    ckpt_root = os.path.join(cfg.run_dir, "checkpoints")
    resume_from = latest_checkpoint(ckpt_root) if cfg.checkpoint.resume == "auto" else None
    start, history, prior, skipped = 0, [], None, 0
    torch.manual_seed(tc.seed)
    if resume_from:
        meta = prior = read_meta(resume_from)
        start, history, skipped = meta["step"], meta.get("growths", []), meta.get("skipped_steps", 0)
        plan = continued_plan(plan, meta)
        if meta["depth"] != plan.depth_at(start) and not (start in plan.boundaries and meta["depth"] == plan.depth_at(start - 1)):
            raise ConfigError("checkpoint.resume", resume_from,
                              f"holds depth {meta['depth']} at step {start}, but this config's growth plan gives depth "
                              f"{plan.depth_at(start)} there: resume with the config it was trained with "
                              f"({os.path.join(cfg.run_dir, 'config.yaml')}), use another run_dir, or set "
                              f"checkpoint.resume=never")
    # Before the engine is built: an impossible on_extend setting stops here, in one line.
    schedule = lr_schedule(cfg.optim, tc.steps, start, prior, cfg.run_dir)
    if resume_from:
        engine = build_engine(spec, prior["depth"], init_weights=False)
        load_checkpoint(engine, resume_from)
    else:
        engine = build_engine(spec, plan.initial_depth)

    result = TrainResult(start_step=start, run_dir=cfg.run_dir, growths=list(history))
    tokens_per_step = tc.global_batch_size * cfg.model.seq_length
    compute = ComputeCount(cfg.model, vocab, tokens_per_step,
                           history[0]["old_depth"] if history else engine.depth, prior)
    metrics = MetricsWriter(cfg.run_dir, enabled=rank0, tensorboard=cfg.logging.tensorboard, resume_step=start,
                            wandb=_wandb_settings(cfg))
    if rank0:
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
            f.write(dump_run_config(cfg))
        metrics.note(f"{cfg.name}: {'resuming from ' + resume_from if resume_from else 'starting'} at step {start}, "
                     f"depth {engine.depth}, {layout.world} rank(s) (TP={layout.tp} PP={layout.pp}"
                     f"{f' x {spec.vpp} virtual' if spec.vpp > 1 else ''} DP={layout.dp}), "
                     f"{'bf16' if bf16 else 'fp32'}, kernels {'on' if use_kernels else 'off'}, vocab {vocab}")
        metrics.note(describe_data(train_ds, tc.steps * tokens_per_step, cfg.data))
        note = plan_note(plan, history, engine.depth, cfg.growth.operator, cfg.growth.block_size)
        for line in (note, schedule.note):
            if line:
                metrics.note(line)
    for g in history:
        # A growth recorded at the resume step itself (an offline growth, `grow-megatron grow`) was
        # dropped from events.jsonl with the records the resumed run rewrites: put it back.
        if g["step"] >= start:
            metrics.event(g["step"], "growth", g)

    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    def meta(done: int) -> dict:
        return {"growths": result.growths, "name": cfg.name, "stage_steps": list(plan.stage_steps),
                "operator": cfg.growth.operator, **schedule.meta(), "skipped_steps": skipped,
                "compute": {"step": done, **compute.at(done, result.growths)}}

    def checked_save(engine: Engine, done: int, **kw) -> str:
        # A diverged state must never become a checkpoint, let alone `latest`: resuming it
        # would fail forever. Stop instead, pointing at the last good one.
        bad = nonfinite_state(engine.model, engine.optimizer)
        if bad:
            raise FloatingPointError(f"the model state after step {done} holds non-finite {', '.join(bad)}, so it was "
                                     f"not checkpointed: lower optim.lr or raise optim.warmup_steps; "
                                     f"{_last_good(ckpt_root)}")
        return save_checkpoint(engine, ckpt_root, done, meta(done), **kw)

    poison_at = int(os.environ.get(FAULT_NAN_GRAD_STEP, -1))
    consecutive = 0
    loops = LoopSchedule(cfg.model.loop)
    pbar = metrics.progress(total=tc.steps, initial=start, enabled=cfg.logging.progress,
                            interval=cfg.logging.print_interval)
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
                    checked_save(engine, step, growth=True, saver=saver)
                t0 = time.perf_counter()
                staged = needs_host_staging(engine, g, cfg.growth.host_staging)
                engine = grow(engine, g, host_staging=staged)
                event = {"step": step, "seconds": round(time.perf_counter() - t0, 4), **g.to_dict(),
                         "pipeline_split": list(engine.split), "host_staged": staged}
                result.growths.append(event)
                metrics.note(f"growth at step {step}: depth {g.old_depth} -> {g.new_depth} ({g.operator}), "
                             f"source map {list(g.source_map)}, {event['seconds']:.2f}s")
                metrics.event(step, "growth", event)
            if loops.update(engine, step):
                metrics.note(f"looping from step {step}: layers {cfg.model.loop.start}..{cfg.model.loop.end - 1} "
                             f"applied {cfg.model.loop.repeats} times (unrolled depth "
                             f"{cfg.model.loop.spec.unrolled_depth(engine.depth)})")
            t0 = time.perf_counter()
            mbs = get_microbatches(train_ds, step=step, global_batch_size=tc.global_batch_size,
                                   micro_batch_size=tc.micro_batch_size, dp_rank=dp_rank, dp_size=layout.dp)
            out = train_step(engine, mbs, schedule.lr(step),
                             before_update=poison_gradients if step == poison_at else None)
            dt = time.perf_counter() - t0
            rec = {"step": step, **out, "depth": engine.depth, "tokens_per_s": tokens_per_step / dt, "step_s": dt,
                   **compute.at(step + 1, result.growths)}
            consecutive = 0 if out["update_ok"] else consecutive + 1
            if not out["update_ok"]:
                skipped += 1
                rec["skipped"] = True
                metrics.note(f"step {step}: non-finite loss or gradients (loss {out['loss']:.4g}), update skipped "
                             f"({consecutive} in a row, {skipped} in this run)")
            rec["skipped_steps"] = skipped
            if consecutive >= tc.max_skipped_steps:
                metrics.log(rec)
                raise FloatingPointError(
                    f"{consecutive} steps in a row ({step - consecutive + 1}..{step}) had a non-finite loss or gradients "
                    f"and were skipped (train.max_skipped_steps = {tc.max_skipped_steps}; lr {out['lr']:.3g} at step "
                    f"{step}): lower optim.lr or raise optim.warmup_steps; {_last_good(ckpt_root)}")
            result.losses[step] = out["loss"]
            done = step + 1
            if tc.eval_interval and valid_ds is not None and (done % tc.eval_interval == 0 or done == tc.steps):
                vmbs = [mb for i in range(tc.eval_batches) for mb in get_microbatches(
                    valid_ds, step=i, global_batch_size=tc.micro_batch_size * layout.dp,
                    micro_batch_size=tc.micro_batch_size, dp_rank=dp_rank, dp_size=layout.dp)]
                rec["val_loss"] = eval_loss(engine, vmbs)
                result.eval_losses[step] = rec["val_loss"]
                metrics.note(f"step {done}/{tc.steps}: held-out loss {rec['val_loss']:.4f} (train loss "
                             f"{out['loss']:.4f}, depth {engine.depth})")
            if done % tc.log_interval == 0 or "val_loss" in rec:
                metrics.log(rec)
            pbar.update(rec)
            if on_step is not None:
                on_step(engine, step, rec)
            fault_point("step.end", step)
            if cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0 and done < end:
                checked_save(engine, done, keep_last=cfg.checkpoint.keep_last, saver=saver)
        # Still under the handlers: a SIGTERM during the final save (or the plot) must not kill
        # the process half-way; it is the stop that is happening anyway.
        pbar.close()
        if saver is not None:  # the final save (and a stop) waits for the one in flight
            saver.wait()
        result.end_step = end
        result.final_depth = engine.depth
        checked_save(engine, end, keep_last=cfg.checkpoint.keep_last)
        metrics.close(plot=end == tc.steps)
    return result
