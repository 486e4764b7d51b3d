"""The training loop: steps, growth at stage boundaries, evaluation, metrics, checkpoints."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state

from grow_megatron.config.base import ConfigError, check_output_dir, to_dict
from grow_megatron.config.run import RunConfig
from grow_megatron.config.rundir import GrowthEvent, RunDir, growth_events
from grow_megatron.config.training import TrainConfig
from grow_megatron.data.datasets import build_datasets, describe_data, get_microbatches
from grow_megatron.engine.build import (
    Engine,
    build_engine,
    eval_loss,
    poison_gradients,
    relearn_grad_ready,
    sync_params,
    train_step,
)
from grow_megatron.engine.checkpoint import (
    CheckpointWriter,
    latest_checkpoint,
    load_checkpoint,
    nonfinite_state,
    read_meta,
    unreadable_leftovers,
)
from grow_megatron.engine.device import Device
from grow_megatron.engine.distributed import broadcast_from_rank0, device_context, init_distributed, rank
from grow_megatron.engine.faults import fault_armed, fault_point
from grow_megatron.engine.grow import grow, needs_host_staging
from grow_megatron.engine.resolve import ResolvedRun, resolve_run
from grow_megatron.growth.schedule import GrowthPlan
from grow_megatron.model.builder import compiled_graphs
from grow_megatron.model.looping import LoopSchedule
from grow_megatron.training.history import ComputeCount, Schedule, continued_plan, lr_schedule, plan_note
from grow_megatron.training.identity import (
    check_changes,
    describe_changes,
    has_history,
    identity_changes,
    legacy_identity,
    record_changes,
    record_start,
    run_identity,
    write_current_config,
)
from grow_megatron.training.metrics import MetricsWriter
from grow_megatron.training.run_lock import prepare_run_dir, run_dir_lock


@dataclass
class TrainResult:
    losses: dict[int, float] = field(default_factory=dict)
    """Training loss of every step run in this call, by global step."""
    eval_losses: dict[int, float] = field(default_factory=dict)
    growths: list[GrowthEvent] = field(default_factory=list)
    start_step: int = 0
    end_step: int = 0
    final_depth: int = 0
    run_dir: str = ""


def _wandb_settings(cfg: RunConfig) -> dict | None:
    """MetricsWriter's W&B settings, or None when logging.wandb is off."""
    if not cfg.logging.wandb:
        return None
    return {"project": cfg.logging.wandb_project, "name": cfg.logging.wandb_name or cfg.name, "config": to_dict(cfg)}


@contextlib.contextmanager
def _graceful_interrupt(device: Device):
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
        hit = torch.tensor([float(flag["hit"])], device=device.type)
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
    return (
        f"the last good checkpoint is {last} (running again resumes from it)"
        if last
        else "no checkpoint was written yet (running again starts from step 0)"
    )


def train(
    cfg: RunConfig, *, stop_at: int | None = None, on_step: Callable[[Engine, int, dict], None] | None = None
) -> TrainResult:
    """Run (or resume) training; `stop_at` stops after that many global steps, checkpointing
    there as a preemption would (used by tests and by Ctrl-C)."""
    # Before anything is set up or written: a run_dir that is a file fails here, not after the
    # data is prepared.
    check_output_dir(cfg.run_dir, "run_dir")
    with device_context():
        layout = init_distributed(
            cfg.parallel.tensor_parallel,
            cfg.parallel.pipeline_parallel,
            cfg.train.seed,
            vpp=cfg.parallel.virtual_stages,
        )
        # Every refusal of the config (an unrunnable plan, kernels without Triton, a vocabulary
        # smaller than the tokenizer's, a size that cannot fit) is one line here, before the
        # run_dir is made; a run_dir another trainer uses is refused before its files are touched.
        run = resolve_run(cfg, layout)
        with run_dir_lock(cfg.run_dir):
            return _train(run, stop_at=stop_at, on_step=on_step)


def _train(run: ResolvedRun, *, stop_at: int | None, on_step) -> TrainResult:
    """The story of a run: its data, where it starts (a new run or the latest checkpoint), then
    per step: grow if due, step, evaluate, log, checkpoint; at the end (or a stop), the last
    checkpoint."""
    cfg = run.cfg
    prepare_run_dir(cfg.run_dir, cfg.checkpoint.resume)
    ckpt_root = _checkpoint_root(cfg)
    origin = _origin(cfg, ckpt_root)  # (a resume that changes the run stops here, before the data is built)
    data = _Data.build(run)
    start, engine = _resume(run, origin)
    history = start.growths
    compute = ComputeCount(
        cfg.model,
        run.vocab,
        _tokens_per_step(cfg),
        history[0].old_depth if history else engine.depth,
        start.checkpoint_meta,
    )
    state = _RunState(
        engine, TrainResult(start_step=start.step, run_dir=cfg.run_dir, growths=list(history)), skipped=start.skipped
    )
    metrics = _open_metrics(run, start, engine, data)
    saves = _Checkpoints(
        cfg, start, compute, CheckpointWriter(ckpt_root, asynchronous=cfg.checkpoint.async_save == "on")
    )
    end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
    loops = LoopSchedule(cfg.model.loop)
    pbar = metrics.progress(
        total=cfg.train.steps, initial=start.step, enabled=cfg.logging.progress, interval=cfg.logging.print_interval
    )
    with _graceful_interrupt(run.spec.device) as interrupted:
        for step in range(start.step, end):
            saves.poll()
            if interrupted():
                metrics.note(f"interrupted: stopping cleanly at step {step} (press Ctrl-C again to abort)")
                end = step
                break
            _grow_if_due(cfg, start.plan, state, step, metrics, saves)
            _loop_if_due(cfg, loops, state, step, metrics)
            rec = _step(cfg, start.schedule, state, data, step, compute, metrics)
            _maybe_eval(cfg, state, data, step, rec, metrics)
            _log(cfg, rec, metrics)
            pbar.update(rec)
            if on_step is not None:
                on_step(state.engine, step, rec)
            fault_point("step.end", step)
            _maybe_checkpoint(cfg, state, step + 1, end, saves)
        # Still under the handlers: a SIGTERM during the final save (or the plot) must not kill
        # the process half-way; it is the stop that is happening anyway.
        pbar.close()
        saves.wait()  # the final save (and a stop) waits for the one in flight
        state.result.end_step = end
        state.result.final_depth = state.engine.depth
        saves.save(state, end, keep_last=cfg.checkpoint.keep_last, asynchronous=False)
        metrics.close(plot=end == cfg.train.steps)
    return state.result


def _tokens_per_step(cfg: RunConfig) -> int:
    return cfg.train.global_batch_size * cfg.model.seq_length


def _checkpoint_root(cfg: RunConfig) -> str:
    return RunDir(cfg.run_dir).checkpoints


@dataclass(frozen=True)
class _Data:
    """The run's datasets and this rank's share of them."""

    train: object
    """megatron's GPTDataset or BlendedDataset (build_datasets)."""
    valid: object | None
    """The held-out split; None when there is none."""
    dp_rank: int
    dp_size: int
    train_cfg: TrainConfig

    @classmethod
    def build(cls, run: ResolvedRun) -> _Data:
        cfg, tc = run.cfg, run.cfg.train
        valid_samples = tc.eval_batches * tc.micro_batch_size * run.layout.dp if tc.eval_interval else 0
        train_ds, valid_ds = build_datasets(
            cfg.data,
            seq_length=cfg.model.seq_length,
            seed=tc.seed,
            train_samples=tc.steps * tc.global_batch_size,
            valid_samples=valid_samples,
            tokenizer=run.tokenizer,
            # A tokenizing bar in a redirected log is one \r-joined line.
            progress=run.layout.is_logging_rank and sys.stderr.isatty(),
            batch_tokens=_tokens_per_step(cfg),
        )
        return cls(train_ds, valid_ds, parallel_state.get_data_parallel_rank(), run.layout.dp, tc)

    def microbatches(self, step: int) -> list[dict]:
        """This rank's micro-batches of training step `step`."""
        tc = self.train_cfg
        return get_microbatches(
            self.train,
            step=step,
            global_batch_size=tc.global_batch_size,
            micro_batch_size=tc.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
        )

    def eval_microbatches(self) -> list[dict]:
        """This rank's micro-batches of the held-out evaluation (the same ones every time)."""
        tc = self.train_cfg
        return [
            mb
            for i in range(tc.eval_batches)
            for mb in get_microbatches(
                self.valid,
                step=i,
                global_batch_size=tc.micro_batch_size * self.dp_size,
                micro_batch_size=tc.micro_batch_size,
                dp_rank=self.dp_rank,
                dp_size=self.dp_size,
            )
        ]


@dataclass(frozen=True)
class _Start:
    """Where this call of train() starts: step 0 of a new run, or the latest checkpoint."""

    step: int
    checkpoint: str | None
    """The checkpoint resumed from (None: a new run)."""
    checkpoint_meta: dict | None
    """Its meta.json."""
    plan: GrowthPlan
    """The growth plan as the run follows it (the stage steps it was started with)."""
    schedule: Schedule
    identity: dict
    """The run's identity (training/identity.py), recorded in every checkpoint."""
    changed: dict
    """Deliberate changes of the identity taking effect at this start: {field: (old, new)}."""

    @property
    def growths(self) -> list[GrowthEvent]:
        """The growth events before the start, as recorded (offline growths included)."""
        return growth_events((self.checkpoint_meta or {}).get("growths", []))

    @property
    def skipped(self) -> int:
        """Non-finite steps skipped before the start."""
        return (self.checkpoint_meta or {}).get("skipped_steps", 0)


@dataclass(frozen=True)
class _Origin:
    """What this call resumes (nothing for a new run) and the run's identity, checked."""

    checkpoint: str | None
    meta: dict | None
    identity: dict
    changed: dict


def _origin(cfg: RunConfig, ckpt_root: str) -> _Origin:
    """The latest checkpoint (checkpoint.resume=auto) and its meta.json, and this run's identity
    checked against the one it recorded."""
    resume_from = latest_checkpoint(ckpt_root) if cfg.checkpoint.resume == "auto" else None
    if resume_from is None and cfg.checkpoint.resume == "auto":
        _refuse_restart_over_lost_checkpoints(cfg, ckpt_root)
    prior = read_meta(resume_from) if resume_from else None
    return _Origin(resume_from, prior, *_checked_identity(cfg, prior, resume_from))


def _resume(run: ResolvedRun, origin: _Origin) -> tuple[_Start, Engine]:
    """The start of this call and its engine: built fresh at the plan's initial depth, or
    loaded from the latest checkpoint."""
    cfg = run.cfg
    resume_from, prior = origin.checkpoint, origin.meta
    torch.manual_seed(cfg.train.seed)
    start = prior["step"] if prior else 0
    plan = continued_plan(run.plan, prior)
    if prior:
        _check_resumed_depth(cfg, plan, resume_from, prior)
    # Before the engine is built: an impossible on_extend setting stops here, in one line.
    schedule = lr_schedule(cfg.optim, cfg.train.steps, start, prior, cfg.run_dir)
    if prior:
        engine = build_engine(run.spec, prior["depth"], init_weights=False)
        load_checkpoint(engine, resume_from)
    else:
        engine = build_engine(run.spec, plan.initial_depth)
    return _Start(start, resume_from, prior, plan, schedule, origin.identity, origin.changed), engine


def _checked_identity(cfg: RunConfig, prior: dict | None, checkpoint: str | None) -> tuple[dict, dict]:
    """This run's identity and, on a resume, its deliberate changes to the recorded one (a
    change that is not deliberate is refused here, before the engine is built). Rank 0 reads
    the data to digest it; every rank gets its identity or its refusal."""
    result = None
    if rank() == 0:
        try:
            # A checkpoint at step 0 without an identity (`convert from-hf`) was never trained:
            # the run's identity is the one its first step trains under.
            recorded = (
                prior.get("identity") or (legacy_identity(cfg.run_dir) if prior["step"] else None) if prior else None
            )
            current = run_identity(cfg, (recorded or {}).get("file_stats"))
            diff = identity_changes(recorded, current) if recorded else {}
            check_changes(diff, cfg.accept_changes, prior["step"] if prior else 0, checkpoint, cfg.run_dir)
            result = ("ok", current, diff)
        except ConfigError as err:
            result = ("refused", err.path, err.value, err.allowed)
        except OSError as err:  # a data file that cannot be read for its digest: never a hang of the other ranks
            result = ("refused", "data", err.filename, f"cannot be read to digest it ({err.strerror})")
    result = broadcast_from_rank0(result)
    if result[0] == "refused":
        raise ConfigError(*result[1:])
    return result[1], result[2]


def _refuse_restart_over_lost_checkpoints(cfg: RunConfig, ckpt_root: str) -> None:
    """A run whose checkpoints were all moved away or cannot be read is not a new run: starting
    it from step 0 would truncate its metrics.jsonl and overwrite its records."""
    left = unreadable_leftovers(ckpt_root)
    if left is not None:
        raise ConfigError(
            "checkpoint.resume",
            "auto",
            f"{ckpt_root} held checkpoints but none is complete and readable now ({left}): this run is "
            f"not started over from step 0 (that would truncate {RunDir(cfg.run_dir).metrics}); put its "
            f"step_* directories back, or set checkpoint.resume=fresh to archive the run and start "
            f"over, or use another run_dir",
        )


def _check_resumed_depth(cfg: RunConfig, plan: GrowthPlan, checkpoint: str, prior: dict) -> None:
    """The checkpoint's depth is the plan's at its step (or the depth before a growth due there)."""
    start, depth = prior["step"], prior["depth"]
    if depth != plan.depth_at(start) and not (start in plan.boundaries and depth == plan.depth_at(start - 1)):
        raise ConfigError(
            "checkpoint.resume",
            checkpoint,
            f"holds depth {depth} at step {start}, but this config's growth plan gives depth "
            f"{plan.depth_at(start)} there: resume with the config it was trained with "
            f"({RunDir(cfg.run_dir).config}), use another run_dir, or set "
            f"checkpoint.resume=never",
        )


def _open_metrics(run: ResolvedRun, start: _Start, engine: Engine, data: _Data) -> MetricsWriter:
    """The run's metrics and notes, opened at the start step; the config it runs with is written
    next to them, and the first notes say what runs."""
    cfg, layout = run.cfg, run.layout
    metrics = MetricsWriter(
        cfg.run_dir,
        enabled=layout.is_logging_rank,
        tensorboard=cfg.logging.tensorboard,
        resume_step=start.step,
        wandb=_wandb_settings(cfg),
    )
    if layout.is_logging_rank:
        os.makedirs(cfg.run_dir, exist_ok=True)
        write_current_config(cfg)
        if start.checkpoint is None or not has_history(cfg.run_dir):
            record_start(cfg, start.identity, start.step)
        if start.checkpoint is not None and start.changed:
            record_changes(cfg, start.step, start.changed)
            metrics.note(
                f"changes from step {start.step} on (recorded in the run's config history): "
                f"{describe_changes(start.changed)}"
            )
        vpp = run.spec.vpp
        metrics.note(
            f"{cfg.name}: {'resuming from ' + start.checkpoint if start.checkpoint else 'starting'} at step "
            f"{start.step}, depth {engine.depth}, {layout.world} rank(s) (TP={layout.tp} PP={layout.pp}"
            f"{f' x {vpp} virtual' if vpp > 1 else ''} DP={layout.dp}), {run.describe()}"
        )
        metrics.note(describe_data(data.train, cfg.train.steps * _tokens_per_step(cfg), cfg.data))
        note = plan_note(start.plan, start.growths, engine.depth, cfg.growth.operator, cfg.growth.block_size)
        for line in (note, start.schedule.note):
            if line:
                metrics.note(line)
    for g in start.growths:
        # A growth recorded at the resume step itself (an offline growth, `grow-megatron grow`) was
        # dropped from events.jsonl with the records the resumed run rewrites: put it back.
        if g.step >= start.step:
            metrics.event(g.step, "growth", g.to_dict())
    return metrics


@dataclass
class _RunState:
    """What changes as the run goes."""

    engine: Engine
    """The current engine (a new one after every growth)."""
    result: TrainResult
    """Losses, held-out losses and growth events so far."""
    skipped: int
    """Non-finite steps skipped over the run's whole history (checkpointed)."""
    consecutive: int = 0
    """Of them, the ones in a row up to the last step."""
    compiled_graphs: int = 0
    """model.compile: graphs dynamo had compiled after the last step (new ones are noted)."""


@dataclass(frozen=True)
class _Checkpoints:
    """Every save of the run goes through `save`: one writer (one root), one meta.json layout."""

    cfg: RunConfig
    start: _Start
    compute: ComputeCount
    writer: CheckpointWriter

    @property
    def root(self) -> str:
        return self.writer.root

    def poll(self) -> None:
        self.writer.poll()  # publishes a finished async save (all ranks, same steps)

    def wait(self) -> None:
        self.writer.wait()

    def save(self, state: _RunState, done: int, *, asynchronous: bool = True, **kw) -> str:
        """Checkpoint the state after `done` steps (in the background when checkpoint.async_save
        is on and `asynchronous`); `kw`: CheckpointWriter.save's growth and keep_last."""
        # A diverged state must never become a checkpoint, let alone `latest`: resuming it
        # would fail forever. Stop instead, pointing at the last good one.
        sync_params(state.engine)  # the weights, not only the optimizer's ranges, are saved
        bad = nonfinite_state(state.engine.model, state.engine.optimizer)
        if bad:
            raise FloatingPointError(
                f"the model state after step {done} holds non-finite {', '.join(bad)}, so it was "
                f"not checkpointed: lower optim.lr or raise optim.warmup_steps; "
                f"{_last_good(self.root)}"
            )
        return self.writer.save(state.engine, done, self._meta(state, done), background=asynchronous, **kw)

    def _meta(self, state: _RunState, done: int) -> dict:
        """What meta.json records besides the engine's own (step, depth, split)."""
        growths = state.result.growths
        return {
            "growths": [g.to_dict() for g in growths],
            "name": self.cfg.name,
            "identity": self.start.identity,
            "stage_steps": list(self.start.plan.stage_steps),
            "operator": self.cfg.growth.operator,
            **self.start.schedule.meta(),
            "skipped_steps": state.skipped,
            "compute": {"step": done, **self.compute.at(done, growths)},
        }


def _grow_if_due(
    cfg: RunConfig, plan: GrowthPlan, state: _RunState, step: int, metrics: MetricsWriter, saves: _Checkpoints
) -> None:
    """Grow the engine to the plan's depth at `step` (one growth per stage boundary passed)."""
    while state.engine.depth < plan.depth_at(step):
        g = next(g for g in plan.growths if g.old_depth == state.engine.depth)
        if cfg.checkpoint.save_at_growth:
            saves.save(state, step, growth=True)
        t0 = time.perf_counter()
        staged = needs_host_staging(state.engine, g, cfg.growth.host_staging)
        state.engine = grow(state.engine, g, host_staging=staged)
        event = GrowthEvent.of(
            step,
            g,
            seconds=round(time.perf_counter() - t0, 4),
            pipeline_split=list(state.engine.split),
            host_staged=staged,
        )
        state.result.growths.append(event)
        metrics.note(
            f"growth at step {step}: depth {g.old_depth} -> {g.new_depth} ({g.operator}), "
            f"source map {list(g.source_map)}, {event.seconds:.2f}s"
        )
        metrics.event(step, "growth", event.to_dict())


def _loop_if_due(cfg: RunConfig, loops: LoopSchedule, state: _RunState, step: int, metrics: MetricsWriter) -> None:
    """Keep model.loop applied from its from_step on (to every engine a growth or resume builds)."""
    if loops.update(state.engine, step):
        relearn_grad_ready(state.engine)  # the looped block's params now get gradients several times
        loop = cfg.model.loop
        metrics.note(
            f"looping from step {step}: layers {loop.start}..{loop.end - 1} applied {loop.repeats} times "
            f"(unrolled depth {loop.spec.unrolled_depth(state.engine.depth)})"
        )


def _step(
    cfg: RunConfig,
    schedule: Schedule,
    state: _RunState,
    data: _Data,
    step: int,
    compute: ComputeCount,
    metrics: MetricsWriter,
) -> dict:
    """One optimizer step; its record. A step with a non-finite loss or gradients is skipped
    (the update is not applied); too many in a row stop the run."""
    tc = cfg.train
    t0 = time.perf_counter()
    microbatches = data.microbatches(step)
    out = train_step(
        state.engine,
        microbatches,
        schedule.lr(step),
        before_update=poison_gradients if fault_armed("step.grads", step) else None,
    )
    dt = time.perf_counter() - t0
    rec = {
        "step": step,
        **out,
        "depth": state.engine.depth,
        "tokens_per_s": _tokens_per_step(cfg) / dt,
        "step_s": dt,
        **compute.at(step + 1, state.result.growths),
    }
    if cfg.model.compile:
        graphs = rec["compiled_graphs"] = compiled_graphs()
        if graphs != state.compiled_graphs:
            metrics.note(
                f"torch.compile: {graphs - state.compiled_graphs} graph(s) compiled at step {step} "
                f"(depth {state.engine.depth}, {graphs} in this process)"
            )
            state.compiled_graphs = graphs
    state.consecutive = 0 if out["update_ok"] else state.consecutive + 1
    if not out["update_ok"]:
        state.skipped += 1
        rec["skipped"] = True
        metrics.note(
            f"step {step}: non-finite loss or gradients (loss {out['loss']:.4g}), update skipped "
            f"({state.consecutive} in a row, {state.skipped} in this run)"
        )
    rec["skipped_steps"] = state.skipped
    if state.consecutive >= tc.max_skipped_steps:
        metrics.log(rec)
        raise FloatingPointError(
            f"{state.consecutive} steps in a row ({step - state.consecutive + 1}..{step}) had a non-finite loss or "
            f"gradients and were skipped (train.max_skipped_steps = {tc.max_skipped_steps}; lr {out['lr']:.3g} at "
            f"step {step}): lower optim.lr or raise optim.warmup_steps; "
            f"{_last_good(_checkpoint_root(cfg))}"
        )
    state.result.losses[step] = out["loss"]
    return rec


def _maybe_eval(cfg: RunConfig, state: _RunState, data: _Data, step: int, rec: dict, metrics: MetricsWriter) -> None:
    """The held-out loss every train.eval_interval steps and after the last step, into `rec`."""
    tc, done = cfg.train, step + 1
    if not (tc.eval_interval and data.valid is not None and (done % tc.eval_interval == 0 or done == tc.steps)):
        return
    rec["val_loss"] = eval_loss(state.engine, data.eval_microbatches())
    state.result.eval_losses[step] = rec["val_loss"]
    metrics.note(
        f"step {done}/{tc.steps}: held-out loss {rec['val_loss']:.4f} (train loss "
        f"{rec['loss']:.4f}, depth {state.engine.depth})"
    )


def _log(cfg: RunConfig, rec: dict, metrics: MetricsWriter) -> None:
    """The step's record into the metrics every train.log_interval steps, and with every held-out loss."""
    if (rec["step"] + 1) % cfg.train.log_interval == 0 or "val_loss" in rec:
        metrics.log(rec)


def _maybe_checkpoint(cfg: RunConfig, state: _RunState, done: int, end: int, saves: _Checkpoints) -> None:
    """The periodic checkpoint every checkpoint.interval steps (the one at the end is the final save)."""
    if cfg.checkpoint.interval and done % cfg.checkpoint.interval == 0 and done < end:
        saves.save(state, done, keep_last=cfg.checkpoint.keep_last)
