"""Stage schedules (SPEC 4) and the growth plan: pure integer arithmetic, no torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from grow_megatron.growth.operators import Growth


def largest_remainder(weights: list[Fraction] | list[float], total: int) -> list[int]:
    """Split `total` into integers proportional to `weights`, summing exactly to `total`.

    Floors first, then the leftover units go to the largest remainders; ties go to the
    earlier entry (SPEC 4).
    """
    s = sum(weights)
    exact = [w * total / s for w in weights]
    floors = [int(x // 1) for x in exact]
    left = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


MAX_ALPHA = 10.0
"""Largest PROP-alpha exponent accepted. At alpha = 10 stage 1 already gets under 2e-5 of the
growth steps with 3 stages (1 / (1 + 2^10 + 3^10)); larger exponents only starve the early
stages further, while the exact rational weights i^alpha grow without bound (alpha = 1e300
would never finish computing)."""


def steps_for_every_stage(num_stages: int, alpha: float) -> int:
    """Growth steps that give every PROP-alpha stage at least one step: sum_j j^alpha, rounded up
    (stage 1, the smallest, then gets at least T / sum_j j^alpha >= 1 before rounding)."""
    return math.ceil(sum(Fraction(i) ** int(alpha) if float(alpha).is_integer() else i**alpha
                         for i in range(1, num_stages + 1)))


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

    def stage_at(self, step: int) -> int:
        """0-indexed stage that trains global step `step`."""
        return sum(1 for b in self.boundaries if step >= b)

    @property
    def final_depth(self) -> int:
        return self.growths[-1].new_depth if self.growths else self.initial_depth


def make_plan(final_depth: int, block_size: int, grow_steps: int, operator: Callable[[int, int], Growth],
              alpha: float = 1.0) -> GrowthPlan:
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
    """The plan of a RunConfig: static at model.num_layers, or PROP-alpha growth."""
    from grow_megatron.growth.operators import get_operator

    if not cfg.growth.enabled:
        return static_plan(cfg.model.num_layers)
    op = get_operator(cfg.growth.operator, cfg.growth.function_preserving)
    return make_plan(cfg.model.num_layers, cfg.growth.block_size, cfg.grow_steps, op, cfg.growth.alpha)
