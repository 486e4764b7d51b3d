"""Warmup-stable-decay learning rate (docs/method.md §2): one schedule over the whole run, growth or not."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from grow_megatron.config.base import ConfigError
from grow_megatron.config.training import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR used by 0-indexed optimizer step `step`.

    Warmup reaches the peak at step warmup_steps - 1; the decay starts at
    total_steps - decay_steps, where lr(t) = peak * (1 - sqrt((t - start) / decay_steps))
    for 1-sqrt (docs/method.md §2), floored at min_lr.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = total_steps - cfg.decay_steps
    if step < start or cfg.decay_steps == 0:
        return cfg.lr
    p = min(1.0, (step - start) / cfg.decay_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * decay_factor(p, cfg.decay_style)


def decay_factor(p: float, style: str) -> float:
    """Fraction of (peak - min_lr) left at decay progress p in [0, 1]."""
    if style == "1-sqrt":
        return 1.0 - math.sqrt(p)
    if style == "linear":
        return 1.0 - p
    return 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class LRSegment:
    """The LR schedule of a run from global step `start` on, after its length changed (a finished
    or grown run trained further): warmup from `lr_from` to `peak` ending before `warmup_end`,
    constant until `decay_start`, then the decay from progress `p_start` to 1 at step `end`.
    min_lr and the decay shape come from the OptimConfig. Stored in the checkpoint's meta.json,
    so a resumed extension keeps its schedule."""

    start: int
    policy: str
    lr_from: float
    warmup_end: int
    peak: float
    decay_start: int
    p_start: float
    end: int

    def progress(self, step: int) -> float:
        """Decay progress at `step`: 0 before the decay, 1 at `end`."""
        if step < self.decay_start or self.end <= self.decay_start:
            return 0.0
        return min(1.0, self.p_start + (1.0 - self.p_start) * (step - self.decay_start) / (self.end - self.decay_start))

    def lr(self, step: int, cfg: OptimConfig) -> float:
        if step < self.warmup_end:
            return self.lr_from + (self.peak - self.lr_from) * (step - self.start + 1) / (self.warmup_end - self.start)
        if step < self.decay_start or self.end <= self.decay_start:
            return self.peak
        return cfg.min_lr + (self.peak - cfg.min_lr) * decay_factor(self.progress(step), cfg.decay_style)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LRSegment:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def base_segment(cfg: OptimConfig, total_steps: int) -> LRSegment:
    """lr_at's schedule as a segment (lr_at itself stays the formula of an unextended run)."""
    return LRSegment(0, "base", 0.0, cfg.warmup_steps, cfg.lr, total_steps - cfg.decay_steps, 0.0, total_steps)


def extend_schedule(current: LRSegment, cfg: OptimConfig, start: int, new_total: int) -> LRSegment:
    """The schedule of a run resumed at `start` whose length changes from current.end to
    `new_total`, by cfg.on_extend (see OptimConfig.on_extend)."""
    last = current.lr(start - 1, cfg) if start > 0 else 0.0
    if cfg.on_extend == "constant":
        return LRSegment(start, "constant", last, start, last, new_total, 0.0, new_total)
    if cfg.on_extend == "rewarmup":
        n = cfg.warmup_steps if cfg.rewarmup_steps is None else cfg.rewarmup_steps
        peak = cfg.lr if cfg.rewarmup_lr is None else cfg.rewarmup_lr
        if start + n + cfg.decay_steps > new_total:
            raise ConfigError(
                "optim.rewarmup_steps",
                n,
                f"the re-warmup ({n} steps) and optim.decay_steps "
                f"({cfg.decay_steps}) must fit in the {new_total - start} steps from {start} to "
                f"train.steps ({new_total}): raise train.steps or lower them",
            )
        return LRSegment(start, "rewarmup", last, start + n, peak, new_total - cfg.decay_steps, 0.0, new_total)
    length = current.end - current.decay_start
    if start - 1 < current.decay_start and new_total - length >= start:
        # Still before the decay: it just happens later (earlier), as in a run of the new length.
        return dataclasses.replace(current, policy="continue", decay_start=new_total - length, end=new_total)
    # In (or past) the decay: go on from the progress reached, stretched to end at new_total.
    return LRSegment(start, "continue", last, start, current.peak, start - 1, current.progress(start - 1), new_total)


def describe_extension(seg: LRSegment, cfg: OptimConfig, old_total: int, start: int) -> str:
    """One line saying which LR schedule a run resumed at `start` with a new length follows."""
    head = f"LR schedule: train.steps {old_total} -> {seg.end}, optim.on_extend={seg.policy}: "
    if seg.policy == "constant":
        return head + f"constant {seg.peak:.3g} (the last LR) until step {seg.end}"
    if seg.policy == "rewarmup":
        return head + (
            f"warmup {seg.lr_from:.3g} -> {seg.peak:.3g} over steps {seg.start}..{seg.warmup_end - 1}, "
            f"decay from step {seg.decay_start} to {cfg.min_lr:.3g} at step {seg.end}"
        )
    if seg.decay_start >= start:
        return head + f"the decay has not begun; it now runs from step {seg.decay_start} to {seg.end}"
    return head + (f"the decay goes on from {seg.lr_from:.3g} (step {start - 1}) to {cfg.min_lr:.3g} at step {seg.end}")
