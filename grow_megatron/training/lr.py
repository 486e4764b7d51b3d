"""Warmup-stable-decay learning rate (SPEC 2): one schedule over the whole run, growth or not."""
from __future__ import annotations

import math

from grow_megatron.config.training import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR used by 0-indexed optimizer step `step`.

    Warmup reaches the peak at step warmup_steps - 1; the decay starts at
    total_steps - decay_steps, where lr(t) = peak * (1 - sqrt((t - start) / decay_steps))
    for 1-sqrt (SPEC 2), floored at min_lr.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = total_steps - cfg.decay_steps
    if step < start or cfg.decay_steps == 0:
        return cfg.lr
    p = min(1.0, (step - start) / cfg.decay_steps)
    if cfg.decay_style == "1-sqrt":
        f = 1.0 - math.sqrt(p)
    elif cfg.decay_style == "linear":
        f = 1.0 - p
    else:
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * f
