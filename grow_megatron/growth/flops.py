"""Training FLOPs accounting (docs/method.md §6) and model FLOPs per token for MFU.

Per token: 6 N + 12 L s d with N = L (2 d^2 + 2 d d_kv + 3 d f) + V d (no norms), the
convention of the paper's Table 7. A grown run sums this over its stages, each stage
counted at its own depth for its own steps. Everything is exact integer arithmetic; only
the petaFLOP figures (1 PF = 1e15 FLOPs) are floats.

How Table 7 counts (verified to all printed digits, see `paper_stage_steps`): stages
1..k start at depth b; growth stage i trains floor(i / sum_j j * T) steps (T = 170,000);
every step not given to a growth stage (the 30,000 cooldown steps plus the rounding
leftovers, 4 steps at 360M and 3 at 1.7B) runs at full depth. The largest-remainder
rounding of docs/method.md §4 gives those leftover steps to the growth stages instead, which lowers the grown
total by 3.46 PF (360M) / 34.20 PF (1.7B); `rounding="paper"` reproduces Table 7.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

from grow_megatron.config.model import ModelConfig
from grow_megatron.growth.operators import midas
from grow_megatron.growth.schedule import GrowthPlan, prop_alpha

PETA = 10**15
UNITS = (("PFLOP", 10**15), ("TFLOP", 10**12), ("GFLOP", 10**9), ("MFLOP", 10**6), ("kFLOP", 10**3), ("FLOP", 1))
"""Units for printed FLOP counts, largest first. PFLOP is the largest so that big runs read in
the paper's unit (Table 7 quotes PF)."""
H100_SXM_BF16_PEAK = 989e12
"""Dense bf16 peak of an H100 SXM in FLOP/s, the MFU denominator of docs/method.md §6."""


SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "vocab_size",
    "seq_length",
)
"""The ModelConfig fields the formula reads (docs/method.md §1): L, d, f, heads, kv heads, V, s."""


def check_shape(model: ModelConfig) -> ModelConfig:
    """`model` if the formula can count it (every SHAPE_FIELDS value a positive integer, the
    heads dividing the width and the kv heads dividing the heads); else a ValueError naming the
    field. num_query_groups None (MHA) counts as num_attention_heads."""
    missing = [f for f in SHAPE_FIELDS if f != "num_query_groups" and getattr(model, f) is None]
    if missing:
        raise ValueError(f"{type(model).__name__} gives no {', '.join(missing)}; pass it explicitly")
    for f in SHAPE_FIELDS:
        v = model.kv_heads if f == "num_query_groups" else getattr(model, f)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"model.{f} = {v!r}: must be a positive integer")
    if model.hidden_size % model.num_attention_heads:
        raise ValueError(
            f"hidden_size {model.hidden_size} is not divisible by num_attention_heads {model.num_attention_heads}"
        )
    if model.num_attention_heads % model.kv_heads:
        raise ValueError(
            f"num_attention_heads {model.num_attention_heads} is not divisible by num_query_groups {model.kv_heads}"
        )
    return model


def flops_shape(model: ModelConfig, vocab_size: int | None = None, seq_length: int | None = None) -> ModelConfig:
    """`model` as the formula counts it: vocab_size and seq_length overridden where given (a run
    config may leave the vocabulary to the tokenizer; a benchmark picks its own sequence
    length), num_query_groups spelled out, checked (check_shape)."""
    return check_shape(
        dataclasses.replace(
            model,
            vocab_size=vocab_size or model.vocab_size,
            seq_length=seq_length or model.seq_length,
            num_query_groups=model.kv_heads,
        )
    )


def shape_dict(model: ModelConfig) -> dict[str, int]:
    """The SHAPE_FIELDS of `model` (the "shape" of `flops --json` and of the benchmark report)."""
    return {f: model.kv_heads if f == "num_query_groups" else getattr(model, f) for f in SHAPE_FIELDS}


def format_shape(model: ModelConfig) -> str:
    """The one-line shape `grow-megatron flops` prints (its format predates ModelConfig as the
    formula's input and is kept as scripts read it)."""
    return "ModelShape(" + ", ".join(f"{k}={v!r}" for k, v in shape_dict(model).items()) + ")"


@dataclass(frozen=True)
class PaperSettings:
    """The training settings behind the paper's Table 7."""

    total_steps: int = 200_000
    """All training steps, growth phase and full-depth cooldown."""
    grow_steps: int = 170_000
    """T: steps split over the growth stages by PROP-alpha."""
    block_size: int = 4
    """b: layers added per growth, also the starting depth."""
    alpha: float = 1.0
    """PROP-alpha exponent."""
    tokens_per_step: int = 2**20
    """Global batch in tokens."""


PAPER_SETTINGS: Mapping[str, PaperSettings] = MappingProxyType(
    {
        "smollm-360m": PaperSettings(tokens_per_step=2**20),
        "smollm-1.7b": PaperSettings(tokens_per_step=2**21),
    }
)

PAPER_TABLE7: Mapping[str, tuple[float, float, float]] = MappingProxyType(
    {
        "smollm-360m": (613527.488, 476147.897, 1.289),
        "smollm-1.7b": (4813222.102, 3736608.182, 1.288),
    }
)
"""Table 7 as printed: (static PF, grown PF, ratio)."""


def flops_unit(flops: float) -> tuple[str, int]:
    """(name, size) of the largest unit in which `flops` is at least 1 (FLOP for 0)."""
    return next(((name, size) for name, size in UNITS if abs(flops) >= size), UNITS[-1])


def format_flops(flops: float, unit: tuple[str, int] | None = None) -> str:
    """`flops` in automatic units (or the given one), e.g. '3.210 TFLOP': small runs must not
    read as 0.000 PF."""
    name, size = unit or flops_unit(flops)
    return f"{flops / size:,.3f} {name}"


def formula_params(shape: ModelConfig) -> int:
    """N of docs/method.md §6: L (2 d^2 + 2 d d_kv + 3 d f) + V d. Norm gains are not counted."""
    check_shape(shape)
    d, f = shape.hidden_size, shape.ffn_hidden_size
    return shape.num_layers * (2 * d * d + 2 * d * shape.kv_size + 3 * d * f) + shape.vocab_size * d


def model_flops_per_token(shape: ModelConfig) -> int:
    """Training FLOPs per token (forward + backward), docs/method.md §6 / Table 7: 6 N + 12 L s d.

    The attention term counts the full s x s score matrix (no causal saving), as the paper does.
    `shape` must give a vocab_size (see flops_shape).
    """
    return 6 * formula_params(shape) + 12 * shape.num_layers * shape.seq_length * shape.hidden_size


def model_flops_per_token_causal(shape: ModelConfig) -> int:
    """6 N + 6 L s d: attention halved because a causal mask skips half the score matrix.

    The convention of the H100 reference measurements (docs/benchmarks.md) and of flash-attention
    style MFU figures; use it
    only to compare with numbers quoted that way. MFU (docs/method.md §6) uses `model_flops_per_token`.
    """
    return 6 * formula_params(shape) + 6 * shape.num_layers * shape.seq_length * shape.hidden_size


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float = H100_SXM_BF16_PEAK) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak."""
    return tokens_per_second * flops_per_token / peak_flops


@dataclass(frozen=True)
class StageFlops:
    """One stage of a run at a fixed depth."""

    stage: int
    """1-indexed stage number."""
    depth: int
    """Number of layers trained in this stage."""
    steps: int
    """Optimizer steps in this stage."""
    tokens: int
    """steps * tokens_per_step."""
    flops_per_token: int
    """model_flops_per_token at this depth."""

    @property
    def flops(self) -> int:
        return self.tokens * self.flops_per_token

    @property
    def petaflops(self) -> float:
        return self.flops / PETA

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "depth": self.depth,
            "steps": self.steps,
            "tokens": self.tokens,
            "flops_per_token": self.flops_per_token,
            "flops": self.flops,
            "petaflops": self.petaflops,
        }


@dataclass(frozen=True)
class RunFlops:
    """Training FLOPs of one run, stage by stage."""

    name: str
    """'static' or 'grown' (or anything the caller likes)."""
    stages: tuple[StageFlops, ...]

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.stages)

    @property
    def petaflops(self) -> float:
        return self.flops / PETA

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "steps": self.steps,
            "tokens": self.tokens,
            "flops": self.flops,
            "petaflops": self.petaflops,
            "stages": [s.to_dict() for s in self.stages],
        }


def run_flops(
    shape: ModelConfig, depths: Sequence[int], steps: Sequence[int], tokens_per_step: int, name: str = ""
) -> RunFlops:
    """FLOPs of a run that trains depths[i] for steps[i] steps (stage by stage)."""
    if len(depths) != len(steps) or not depths:
        raise ValueError(f"need one step count per depth, got depths={list(depths)} steps={list(steps)}")
    if any(n < 0 for n in steps) or any(L <= 0 for L in depths) or tokens_per_step <= 0:
        raise ValueError(
            f"depths, steps and tokens_per_step must be positive: {list(depths)}, {list(steps)}, {tokens_per_step}"
        )
    stages = tuple(
        StageFlops(i + 1, L, n, n * tokens_per_step, model_flops_per_token(shape.with_layers(L)))
        for i, (L, n) in enumerate(zip(depths, steps))
    )
    return RunFlops(name, stages)


def training_flops(
    shape: ModelConfig,
    tokens_per_step: int,
    initial_depth: int,
    growths: Sequence[tuple[int, int]],
    start: int,
    end: int,
) -> int:
    """FLOPs of global steps start..end-1 of a run that starts at `initial_depth` and, for each
    (step, depth) in `growths`, trains at that depth from that step on (docs/method.md §6: every step at
    the depth that trains it). Exact integers; O(growths), not O(steps)."""
    points = [(0, initial_depth)] + sorted(growths)
    total = 0
    for i, (first, depth) in enumerate(points):
        last = points[i + 1][0] if i + 1 < len(points) else max(end, first)
        lo, hi = max(first, start), min(last, end)
        if hi > lo:
            total += (hi - lo) * tokens_per_step * model_flops_per_token(shape.with_layers(depth))
    return total


def with_loop(run: RunFlops, shape: ModelConfig, from_step: int, unrolled_depth: int) -> RunFlops:
    """`run` with every step from `from_step` on at `unrolled_depth` (loop-adapted training,
    docs/method.md §10: a looped block costs what its unrolled copies cost). The loop starts at the final
    depth, so only steps at shape.num_layers change."""
    stages, start = [], 0
    for s in run.stages:
        before = min(max(from_step - start, 0), s.steps) if s.depth == shape.num_layers else s.steps
        for depth, n in ((s.depth, before), (unrolled_depth, s.steps - before)):
            if n:
                stages.append(
                    StageFlops(
                        len(stages) + 1,
                        depth,
                        n,
                        n * (s.tokens // s.steps),
                        model_flops_per_token(shape.with_layers(depth)),
                    )
                )
        start += s.steps
    return RunFlops(run.name + (" looped" if unrolled_depth != shape.num_layers else ""), tuple(stages))


def static_flops(shape: ModelConfig, total_steps: int, tokens_per_step: int) -> RunFlops:
    """A run at full depth (shape.num_layers) for all steps."""
    return run_flops(shape, [shape.num_layers], [total_steps], tokens_per_step, name="static")


def plan_depths_and_steps(plan: GrowthPlan, total_steps: int) -> tuple[list[int], list[int]]:
    """Per-stage depths and steps of `plan` in a run of `total_steps` steps.

    The last stage runs until the end of training (GrowthPlan's convention), so it gets
    total_steps minus the earlier stages, whatever plan.stage_steps[-1] says.
    """
    depths = [plan.initial_depth] + [g.new_depth for g in plan.growths]
    before_last = sum(plan.stage_steps[:-1])
    if len(plan.stage_steps) != len(depths):
        raise ValueError(f"plan has {len(plan.stage_steps)} stages but {len(plan.growths)} growths")
    if total_steps < before_last:
        raise ValueError(f"total_steps {total_steps} ends before the last growth (step {before_last})")
    return depths, list(plan.stage_steps[:-1]) + [total_steps - before_last]


def grown_flops(shape: ModelConfig, plan: GrowthPlan, total_steps: int, tokens_per_step: int) -> RunFlops:
    """FLOPs of a grown run following `plan`; its final depth must be shape.num_layers."""
    if plan.final_depth != shape.num_layers:
        raise ValueError(f"plan grows to {plan.final_depth} layers but the model has {shape.num_layers}")
    depths, steps = plan_depths_and_steps(plan, total_steps)
    return run_flops(shape, depths, steps, tokens_per_step, name="grown")


def paper_stage_steps(num_stages: int, grow_steps: int, alpha: float = 1.0) -> list[int]:
    """Stage lengths as Table 7 counts them: floor(i^alpha / sum_j j^alpha * T), no redistribution.

    The rounding leftover (sum < T) then trains at full depth. This is the only rounding
    found that reproduces all printed digits of both grown totals (largest remainder, plain
    rounding, exact fractions and floored cumulative boundaries all miss; see module doc).
    """
    if num_stages < 1 or grow_steps < 0:
        raise ValueError(f"need num_stages >= 1 and grow_steps >= 0, got {num_stages}, {grow_steps}")
    if float(alpha).is_integer():
        w = [Fraction(i) ** int(alpha) for i in range(1, num_stages + 1)]
    else:
        w = [i**alpha for i in range(1, num_stages + 1)]
    total = sum(w)
    return [int(x * grow_steps // total) for x in w]


def prop_plan(
    final_depth: int, block_size: int, grow_steps: int, alpha: float = 1.0, rounding: Literal["spec", "paper"] = "spec"
) -> GrowthPlan:
    """A PROP-alpha GrowthPlan for FLOPs purposes (MIDAS insertion; FLOPs do not depend on where).

    rounding="spec": largest remainder, docs/method.md §4 (what the trainer runs); "paper": Table 7's floors.
    """
    if final_depth % block_size:
        raise ValueError(f"final depth {final_depth} is not a multiple of block size {block_size}")
    k = final_depth // block_size
    if rounding == "spec":
        steps = prop_alpha(k, grow_steps, alpha)
    elif rounding == "paper":
        steps = paper_stage_steps(k, grow_steps, alpha)
    else:
        raise ValueError(f"rounding = {rounding!r}: must be 'spec' or 'paper'")
    # The last growth stage's length is implied: it runs to the end of training.
    growths = tuple(midas(i * block_size, block_size) for i in range(1, k))
    return GrowthPlan(block_size, tuple(steps), growths)


@dataclass(frozen=True)
class FlopsComparison:
    """Static vs grown training FLOPs of the same final model."""

    shape: ModelConfig
    tokens_per_step: int
    static: RunFlops
    grown: RunFlops

    @property
    def ratio(self) -> float:
        """static / grown: how many times more compute the static run takes (Table 7's ratio)."""
        return self.static.flops / self.grown.flops

    def to_dict(self) -> dict:
        return {
            "shape": shape_dict(self.shape),
            "formula_params": formula_params(self.shape),
            "tokens_per_step": self.tokens_per_step,
            "static": self.static.to_dict(),
            "grown": self.grown.to_dict(),
            "ratio": self.ratio,
            "grown_fraction_of_static": self.grown.flops / self.static.flops,
        }

    def format_table(self) -> str:
        # One unit for the whole table (that of the larger total), so the column compares.
        unit = flops_unit(max(self.static.flops, self.grown.flops))
        rows = [("run", "stage", "depth", "steps", "tokens", "FLOPs", unit[0])]
        for run in (self.grown, self.static):
            for s in run.stages:
                rows.append(
                    (
                        run.name,
                        str(s.stage),
                        str(s.depth),
                        f"{s.steps:,}",
                        f"{s.tokens:,}",
                        f"{s.flops:.4e}",
                        f"{s.flops / unit[1]:,.3f}",
                    )
                )
            rows.append(
                (
                    run.name,
                    "total",
                    "",
                    f"{run.steps:,}",
                    f"{run.tokens:,}",
                    f"{run.flops:.4e}",
                    f"{run.flops / unit[1]:,.3f}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for j, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if j == 0 or (j + 1 < len(rows) and rows[j + 1][0] != r[0]):
                lines.append("-" * len(lines[0]))
        lines.append("")
        lines.append(f"ratio static/grown: {self.ratio:.4f}  (grown = {100 / self.ratio:.2f}% of static)")
        return "\n".join(lines)


def compare(shape: ModelConfig, plan: GrowthPlan, total_steps: int, tokens_per_step: int) -> FlopsComparison:
    """Static and grown FLOPs of `shape` trained for `total_steps` steps."""
    return FlopsComparison(
        shape,
        tokens_per_step,
        static_flops(shape, total_steps, tokens_per_step),
        grown_flops(shape, plan, total_steps, tokens_per_step),
    )
