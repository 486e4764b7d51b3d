"""Loop specs (docs/method.md §10): a block of layers applied several times in a row with the same weights.

`LoopSpec` is the one place a loop is parsed (`12:16x3` on a command line), validated against
a depth and turned into positions; everything that runs a looped model (the megatron engine,
the Hugging Face wrapper, the sweep, FLOPs, export) derives what it needs from it.

Unrolled positions: the looped model is read as the unrolled one, depth L + (r-1)(e-s), layer
order [0..e-1] + [s..e-1] * (r-1) + [e..L-1]. That is the depth positions, LN-Scaling and FLOPs
see. In particular **each application of a layer uses the LN-Scaling factor 1/sqrt(u) of its
unrolled (1-indexed) position u**, and layers above the block move up by (r-1)(e-s): a looped
model is then exactly the unrolled model with tied weights, which is what the growth machinery
builds from the same source map, and what `convert to-hf` writes as a plain Llama.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from grow_megatron.config.base import ConfigError, check

SYNTAX = "START:ENDxR, e.g. 12:16x3 (layers 12..15, 0-indexed, applied 3 times in a row)"
_PATTERN = re.compile(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*")


@dataclass(frozen=True)
class LoopSpec:
    """Layers [start, end) (0-indexed) applied `repeats` times in a row; repeats = 1 is the plain model."""

    start: int
    end: int
    repeats: int = 1

    @classmethod
    def parse(cls, text: str, field: str = "--loop", depth: int | None = None) -> LoopSpec:
        """`START:ENDxR` -> LoopSpec, checked (and checked against `depth` when given)."""
        m = _PATTERN.fullmatch(str(text))
        if m is None:
            raise ConfigError(field, text, f"must look like {SYNTAX}")
        spec = cls(*(int(g) for g in m.groups()))
        spec.check(field, depth)
        return spec

    def check(self, field: str = "--loop", depth: int | None = None) -> LoopSpec:
        """One-line ConfigError for an empty block, a block past `depth`, or repeats < 1."""
        text = str(self)
        check(self.start >= 0, field, text, "START must be >= 0 (layers are 0-indexed)")
        check(
            self.end > self.start,
            field,
            text,
            "empty block: END must be greater than START (the block is layers START..END-1)",
        )
        if depth is not None:
            check(
                self.end <= depth,
                field,
                text,
                f"END is past the model's depth {depth}: the block must lie "
                f"within layers 0..{depth - 1} (END <= {depth})",
            )
        check(self.repeats >= 1, field, text, "R must be >= 1 (R = 1 is the plain model)")
        return self

    def __str__(self) -> str:
        return f"{self.start}:{self.end}x{self.repeats}"

    @property
    def block_size(self) -> int:
        return self.end - self.start

    def unrolled_depth(self, depth: int) -> int:
        return depth + (self.repeats - 1) * self.block_size

    def source_map(self, depth: int) -> tuple[int, ...]:
        """For each unrolled position, the layer whose weights it applies (docs/method.md §10)."""
        block = tuple(range(self.start, self.end))
        return tuple(range(self.end)) + block * (self.repeats - 1) + tuple(range(self.end, depth))

    def extra_positions(self) -> list[list[int]]:
        """Unrolled positions (0-indexed) of the repeated applications: one list per repeat
        after the first, in block order."""
        b = self.block_size
        return [[self.end + k * b + i for i in range(b)] for k in range(self.repeats - 1)]

    def shift(self, position: int) -> int:
        """Unrolled position of the (single) application of layer `position`, for layers outside
        the repeated applications (below the block: unchanged; above it: moved up)."""
        return position if position < self.end else position + (self.repeats - 1) * self.block_size

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "repeats": self.repeats}


@dataclass
class LoopConfig:
    """Loop-adapted training (docs/method.md §10): from `from_step` on, layers [start, end) are applied
    `repeats` times with tied weights (their gradients summed into one parameter set)."""

    start: int = 0
    """First layer of the looped block (0-indexed, in the final-depth model)."""
    end: int = 0
    """One past the last layer of the block."""
    repeats: int = 2
    """Applications of the block per forward (1 = plain model)."""
    from_step: int = 0
    """First step trained looped; with growth it must be at or after the final depth (growth.grow_steps)."""

    @property
    def spec(self) -> LoopSpec:
        return LoopSpec(self.start, self.end, self.repeats)

    def validate(self, num_layers: int, total_steps: int, grow_steps: int | None, path: str = "model.loop") -> None:
        self.spec.check(path, num_layers)
        check(
            0 <= self.from_step <= total_steps,
            f"{path}.from_step",
            self.from_step,
            f"must be in 0..train.steps ({total_steps})",
        )
        if grow_steps is not None:
            check(
                self.from_step >= grow_steps,
                f"{path}.from_step",
                self.from_step,
                f"must be >= growth.grow_steps ({grow_steps}): loop once the model has its final depth",
            )

    def active_at(self, step: int) -> bool:
        return step >= self.from_step and self.repeats > 1


def check_loop_arg(text: str | None) -> LoopSpec | None:
    """A --loop value's syntax, checked before any model is loaded (the depth is checked on apply)."""
    return None if text is None else LoopSpec.parse(text)
