"""Stage schedules (docs/method.md §4) and the growth plan: pure integer arithmetic, no torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from grow_megatron.config.base import ConfigError, check
from grow_megatron.config.training import MAX_ALPHA
from grow_megatron.growth.operators import Growth, get_operator
from grow_megatron.growth.partition import offsets, split_at


def largest_remainder(weights: list[Fraction] | list[float], total: int) -> list[int]:
    """Split `total` into integers proportional to `weights`, summing exactly to `total`.

    Floors first, then the leftover units go to the largest remainders; ties go to the
    earlier entry (docs/method.md §4).
    """
    s = sum(weights)
    exact = [w * total / s for w in weights]
    floors = [int(x // 1) for x in exact]
    left = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def steps_for_every_stage(num_stages: int, alpha: float) -> int:
    """Growth steps that give every PROP-alpha stage at least one step: sum_j j^alpha, rounded up
    (stage 1, the smallest, then gets at least T / sum_j j^alpha >= 1 before rounding)."""
    return math.ceil(
        sum(Fraction(i) ** int(alpha) if float(alpha).is_integer() else i**alpha for i in range(1, num_stages + 1))
    )


def prop_alpha(num_stages: int, total_steps: int, alpha: float = 1.0) -> list[int]:
    """PROP-alpha: stage i (1..k) trains i^alpha / sum_j j^alpha * T steps."""
    if num_stages < 1 or total_steps < 0:
        raise ValueError(f"need num_stages >= 1 and total_steps >= 0, got {num_stages}, {total_steps}")
    if not 0 <= alpha <= MAX_ALPHA:
        raise ValueError(f"alpha must be in [0, {MAX_ALPHA:g}], got {alpha}")
    if float(alpha).is_integer():
        # Exact rationals: float rounding could flip a tie in the remainder order.
        weights: list = [Fraction(i) ** int(alpha) for i in range(1, num_stages + 1)]
    else:
        weights = [i**alpha for i in range(1, num_stages + 1)]
    return largest_remainder(weights, total_steps)


@dataclass(frozen=True)
class GrowthPlan:
    """When the model grows and how: stage lengths in steps plus one Growth per boundary."""

    initial_depth: int
    stage_steps: tuple[int, ...]
    """Steps trained in each stage (the last stage runs until the end of training)."""
    growths: tuple[Growth, ...]
    """growths[i] takes stage i to stage i+1."""

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Global steps at which growths[i] is applied (before that step runs)."""
        out, acc = [], 0
        for steps in self.stage_steps[:-1]:
            acc += steps
            out.append(acc)
        return tuple(out)

    def depth_at(self, step: int) -> int:
        """Depth of the model that trains global step `step` (0-indexed)."""
        depth = self.initial_depth
        for boundary, g in zip(self.boundaries, self.growths):
            if step >= boundary:
                depth = g.new_depth
        return depth

    @property
    def final_depth(self) -> int:
        return self.growths[-1].new_depth if self.growths else self.initial_depth


def make_plan(
    final_depth: int, block_size: int, grow_steps: int, operator: Callable[[int, int], Growth], alpha: float = 1.0
) -> GrowthPlan:
    """PROP-alpha plan growing from b to `final_depth` layers over the first `grow_steps` steps.

    Stage lengths cover the growth phase; the final stage then runs to the end of training.
    """
    if final_depth % block_size:
        raise ValueError(f"final depth {final_depth} is not a multiple of block size {block_size}")
    k = final_depth // block_size
    steps = prop_alpha(k, grow_steps, alpha)
    growths = tuple(operator(i * block_size, block_size) for i in range(1, k))
    return GrowthPlan(block_size, tuple(steps), growths)


def static_plan(depth: int) -> GrowthPlan:
    return GrowthPlan(depth, (0,), ())


def plan_from_config(cfg) -> GrowthPlan:
    """The plan of a RunConfig: static at model.num_layers, or PROP-alpha growth. Raises a
    one-line ConfigError for a config whose plan cannot be run (a stage without steps, a looped
    block across pipeline stages); every command calls it before doing any work."""
    if cfg.model.loop is not None:
        _check_loop_in_one_stage(cfg)
    if not cfg.growth.enabled:
        return static_plan(cfg.model.num_layers)
    g = cfg.growth
    k = cfg.model.num_layers // g.block_size
    steps = prop_alpha(k, cfg.grow_steps, g.alpha)
    if min(steps) < 1:
        raise ConfigError(
            "growth.alpha",
            g.alpha,
            f"gives stage {steps.index(0) + 1} of {k} no steps (PROP-{g.alpha:g} over "
            f"{cfg.grow_steps} growth steps: {steps}): lower growth.alpha, or raise "
            f"growth.grow_steps (with train.steps) to "
            f"{steps_for_every_stage(k, g.alpha)}, which gives every stage a step",
        )
    return make_plan(
        cfg.model.num_layers, g.block_size, cfg.grow_steps, get_operator(g.operator, g.function_preserving), g.alpha
    )


def describe_plan(cfg) -> dict:
    """The plan of a RunConfig as `grow-megatron plan` prints it: each stage's depth, first step,
    steps and pipeline split, and each growth with its step."""
    plan = plan_from_config(cfg)
    n_stages = cfg.parallel.num_virtual_stages
    stages, start = [], 0
    depth = plan.initial_depth
    for i, steps in enumerate(plan.stage_steps):
        if i > 0:
            depth = plan.growths[i - 1].new_depth
        last = i == len(plan.stage_steps) - 1
        n = cfg.train.steps - start if last else steps
        stages.append(
            {
                "stage": i + 1,
                "depth": depth,
                "start_step": start,
                "steps": n,
                "pipeline_split": list(split_at(depth, n_stages, cfg.parallel.pipeline_split)),
            }
        )
        start += steps
    return {
        "operator": cfg.growth.operator,
        "block_size": cfg.growth.block_size,
        "stages": stages,
        "growths": [{"step": b, **g.to_dict()} for b, g in zip(plan.boundaries, plan.growths)],
    }


def _check_loop_in_one_stage(cfg) -> None:
    loop, par = cfg.model.loop, cfg.parallel
    split = split_at(
        cfg.model.num_layers, par.num_virtual_stages, tuple(par.pipeline_split) if par.pipeline_split else None
    )
    starts = offsets(split)

    def stage(pos: int) -> int:
        return max(i for i, o in enumerate(starts) if o <= pos)

    check(
        stage(loop.start) == stage(loop.end - 1),
        "model.loop",
        loop.spec.to_dict(),
        "the looped block must lie within one pipeline stage; the stages hold layers "
        + ", ".join(f"{o}..{o + n - 1}" for o, n in zip(starts, split))
        + ": move the block or set parallel.pipeline_split",
    )
