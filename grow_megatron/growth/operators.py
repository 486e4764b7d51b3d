"""Growth operators (docs/method.md §3): pure functions (L, b) -> Growth.

Every operator of this family inserts copies of b consecutive existing layers at one place.
`Growth` records that (which layers are copied, where the copies go); the source map, the
positions of the old layers and of the new ones are derived from it, never stored twice.
Layers keep stable identities: old layer i sits at position i below the insertion point and
at i + b above it; only the b inserted positions hold new layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from grow_megatron.config.training import OPERATORS as OPERATOR_NAMES


@dataclass(frozen=True)
class Growth:
    """One growth step: insert copies of layers [copy_start, copy_start+b) at position insert_at."""

    old_depth: int
    """L, the depth before the growth."""
    copy_start: int
    """0-indexed first old layer that is copied."""
    block_size: int
    """b, the number of layers added."""
    insert_at: int
    """Position (0-indexed, in the grown model) of the first inserted copy."""
    zero_outputs: bool = False
    """Function-preserving: the copies' output projections (attention out, MLP down) start at 0."""
    operator: str = ""
    """Name of the operator that produced it (for logs and checkpoints)."""

    def __post_init__(self) -> None:
        L, b = self.old_depth, self.block_size
        if not (0 < b and 0 <= self.copy_start and self.copy_start + b <= L and 0 <= self.insert_at <= L):
            raise ValueError(f"invalid growth {self}")

    @property
    def new_depth(self) -> int:
        return self.old_depth + self.block_size

    @property
    def source_map(self) -> tuple[int, ...]:
        """For each position of the grown model, the old layer that initialises it."""
        a, b = self.insert_at, self.block_size
        copied = range(self.copy_start, self.copy_start + b)
        return tuple(range(a)) + tuple(copied) + tuple(range(a, self.old_depth))

    @property
    def new_positions(self) -> tuple[int, ...]:
        """Positions in the grown model that hold freshly inserted layers."""
        return tuple(range(self.insert_at, self.insert_at + self.block_size))

    def to_dict(self) -> dict:
        return {
            "operator": self.operator,
            "old_depth": self.old_depth,
            "new_depth": self.new_depth,
            "source_map": list(self.source_map),
            "new_positions": list(self.new_positions),
            "zero_outputs": self.zero_outputs,
        }


def _check(L: int, b: int, need_blocks: bool) -> None:
    if b <= 0 or L < b:
        raise ValueError(f"cannot grow depth {L} by block size {b}: need 0 < b <= L")
    if need_blocks and L % b:
        raise ValueError(f"depth {L} is not a whole number of blocks of size {b}")


def midas(L: int, b: int) -> Growth:
    """MIDAS: copy the middle block B_m, m = ceil(n/2) - 1 with n = L/b, right after itself."""
    _check(L, b, need_blocks=True)
    m = math.ceil((L // b) / 2) - 1
    return Growth(L, m * b, b, (m + 1) * b, operator="midas")


def lidas(L: int, b: int) -> Growth:
    """LIDAS (docs/method.md §3 fix): copy the b layers around the middle layer m = ceil(L/2) (1-indexed),
    1-indexed m-ceil(b/2)+1 .. m+floor(b/2), inserted right after the last of them."""
    _check(L, b, need_blocks=False)
    m = math.ceil(L / 2)
    start = m - math.ceil(b / 2)  # 0-indexed first copied layer
    end = m + b // 2  # 0-indexed one past the last copied layer
    if start < 0 or end > L:
        raise ValueError(f"LIDAS needs depth >= block size: L={L}, b={b}")
    return Growth(L, start, b, end, operator="lidas")


def top(L: int, b: int) -> Growth:
    """Gradual stacking (Reddi et al. 2023): copy the top block onto the top."""
    _check(L, b, need_blocks=False)
    return Growth(L, L - b, b, L, operator="top")


def bottom(L: int, b: int) -> Growth:
    """Copy the bottom block, inserted right after itself."""
    _check(L, b, need_blocks=False)
    return Growth(L, 0, b, b, operator="bottom")


OPERATORS: dict[str, Callable[[int, int], Growth]] = {"midas": midas, "lidas": lidas, "top": top, "bottom": bottom}
assert tuple(OPERATORS) == OPERATOR_NAMES, (
    "config.training.OPERATORS and the functions here must name the same operators"
)


def get_operator(name: str, function_preserving: bool = False) -> Callable[[int, int], Growth]:
    """The operator `name`; with function_preserving, the same copies with zeroed output projections."""
    base = OPERATORS[name]
    if not function_preserving:
        return base

    def fp(L: int, b: int) -> Growth:
        g = base(L, b)
        return Growth(g.old_depth, g.copy_start, g.block_size, g.insert_at, zero_outputs=True, operator=f"{name}+fp")

    return fp
