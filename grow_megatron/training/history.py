"""What a resumed run keeps from its past: growth plan, LR schedule and compute counts.

A checkpoint's meta.json records the stage steps the run was planned with, the growths as
they happened, train.steps, the LR schedule if it was changed (lr.LRSegment) and the tokens
and FLOPs trained so far. Resuming with another train.steps (training a finished or grown run
further) must not replan the past: growths stay where they were, the LR follows
optim.on_extend, and the compute counts go on from the checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from grow_megatron.config.base import ConfigError
from grow_megatron.config.run import read_yaml
from grow_megatron.config.rundir import GrowthEvent, RunDir
from grow_megatron.config.training import OptimConfig
from grow_megatron.growth import flops as F
from grow_megatron.growth.schedule import GrowthPlan
from grow_megatron.training.lr import LRSegment, base_segment, describe_extension, extend_schedule, lr_at


def recorded_total(meta: dict, run_dir: str) -> int | None:
    """train.steps the checkpoint was trained towards: meta.json's, or (checkpoints written
    before it was recorded) the run's config.yaml, read before this run replaces it."""
    if "train_steps" in meta:
        return int(meta["train_steps"])
    steps = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            steps = (read_yaml(RunDir(run_dir).config).get("train") or {}).get("steps")
        except ConfigError:
            pass
    if dist.is_initialized() and dist.get_world_size() > 1:
        # Rank 0 rewrites config.yaml soon after: a slower rank must not read the new one.
        box = [steps]
        dist.broadcast_object_list(box, src=0)
        steps = box[0]
    return steps if isinstance(steps, int) else None


def continued_plan(plan: GrowthPlan, meta: dict | None) -> GrowthPlan:
    """`plan` with the stage steps the checkpoint was planned with: growth.grow_steps defaults to
    train.steps - optim.decay_steps, so a longer train.steps would otherwise move growths that
    already happened."""
    recorded = tuple((meta or {}).get("stage_steps") or ())
    if plan.growths and len(recorded) == len(plan.stage_steps) and recorded != plan.stage_steps:
        return GrowthPlan(plan.initial_depth, recorded, plan.growths)
    return plan


@dataclass
class Schedule:
    """The LR of every step of this run; `segment` is None for the plain lr_at schedule."""

    optim: OptimConfig
    total: int
    segment: LRSegment | None = None
    note: str | None = None
    """The line that says which schedule a run of changed length follows."""

    def lr(self, step: int) -> float:
        return self.segment.lr(step, self.optim) if self.segment else lr_at(step, self.optim, self.total)

    def meta(self) -> dict:
        return {"train_steps": self.total, "lr_schedule": self.segment.to_dict() if self.segment else None}


def lr_schedule(optim: OptimConfig, total: int, start: int, meta: dict | None, run_dir: str) -> Schedule:
    """The schedule of a run of `total` steps resuming at `start` from a checkpoint with `meta`
    (None: a new run)."""
    if meta is None:
        return Schedule(optim, total)
    seg = LRSegment.from_dict(meta["lr_schedule"]) if meta.get("lr_schedule") else None
    old_total = seg.end if seg else recorded_total(meta, run_dir)
    if old_total is None or old_total == total or start >= total:
        return Schedule(optim, total, seg)
    new = extend_schedule(seg or base_segment(optim, old_total), optim, start, total)
    return Schedule(optim, total, new, describe_extension(new, optim, old_total, start))


def plan_note(plan: GrowthPlan, history: list[GrowthEvent], depth: int, operator: str, block_size: int) -> str | None:
    """The growth plan as this run will follow it: growths done (as recorded, offline ones
    included) and growths to come."""
    done = [f"{g.old_depth}->{g.new_depth} at step {g.step}" + (" (offline)" if g.offline else "") for g in history]
    todo = [
        f"{g.old_depth}->{g.new_depth} at step {b}"
        for b, g in zip(plan.boundaries, plan.growths)
        if g.old_depth >= depth
    ]
    if not done and not todo:
        return None
    parts = [
        f"growth plan ({operator}, b={block_size}): stage steps {list(plan.stage_steps)}"
        if plan.growths
        else "growth history"
    ]
    if done:
        parts.append("done: " + ", ".join(done))
    parts.append("to come: " + (", ".join(todo) if todo else f"none (final depth {depth})"))
    return "; ".join(parts)


class ComputeCount:
    """Cumulative training tokens and FLOPs (docs/method.md §6, each step at its own depth) after any
    number of steps, derived from the checkpoint's counts and the growth history: the same
    numbers whether a run went through in one go or was resumed."""

    def __init__(self, model, vocab: int, tokens_per_step: int, initial_depth: int, meta: dict | None):
        self.shape = F.flops_shape(model, vocab_size=vocab)
        self.tokens_per_step = tokens_per_step
        self.initial_depth = initial_depth
        self.anchor = dict((meta or {}).get("compute") or {"step": 0, "tokens": 0, "flops": 0})
        # Loop-adapted training (model.loop) costs its unrolled depth from from_step on, like a
        # growth to that depth there (from_step is validated to lie after every growth).
        loop = getattr(model, "loop", None)
        self.loop_point = (
            [(loop.from_step, loop.spec.unrolled_depth(model.num_layers))]
            if loop is not None and loop.repeats > 1
            else []
        )

    def at(self, done: int, growths: list[GrowthEvent]) -> dict:
        """{"tokens", "flops"} after `done` global steps; `growths`: the run's growth events."""
        a = self.anchor
        flops = a["flops"] + F.training_flops(
            self.shape,
            self.tokens_per_step,
            self.initial_depth,
            [(g.step, g.new_depth) for g in growths] + self.loop_point,
            a["step"],
            done,
        )
        return {"tokens": a["tokens"] + (done - a["step"]) * self.tokens_per_step, "flops": flops}
