"""Pipeline partition and growth transfer plans: pure functions of integers (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

from grow_megatron.growth.operators import Growth


def balanced_split(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """Layers per pipeline stage, sizes differing by at most one.

    The first stage also runs the embedding and the last one the output layer and loss, so
    the leftover layers go to the inner stages first (last inner stage first), then to the
    last stage, then to the first: e.g. 4 layers on 3 stages -> (1, 2, 1), 8 -> (2, 3, 3)."""
    if num_stages < 1 or num_layers < num_stages:
        raise ValueError(
            f"cannot split {num_layers} layers over {num_stages} pipeline stages: every stage needs at least one layer"
        )
    base, extra = divmod(num_layers, num_stages)
    sizes = [base] * num_stages
    # Prefer inner stages for the extra layers, then the outer ones.
    order = (
        list(range(1, num_stages - 1))[::-1] + [num_stages - 1, 0] if num_stages > 2 else list(range(num_stages))[::-1]
    )
    for s in order[:extra]:
        sizes[s] += 1
    return tuple(sizes)


def split_at(depth: int, num_stages: int, final_split=None) -> tuple[int, ...]:
    """Layers per (virtual) stage at `depth`: the user's split where it fits (the final depth),
    balanced everywhere else."""
    if final_split is not None and len(final_split) == num_stages and sum(final_split) == depth:
        return tuple(final_split)
    return balanced_split(depth, num_stages)


def stage_of(split: tuple[int, ...]) -> tuple[int, ...]:
    """For each global layer position, the pipeline stage holding it."""
    return tuple(s for s, n in enumerate(split) for _ in range(n))


def offsets(split: tuple[int, ...]) -> tuple[int, ...]:
    """Global position of each stage's first layer."""
    out, acc = [], 0
    for n in split:
        out.append(acc)
        acc += n
    return tuple(out)


def rank_of(stage: int, pp: int) -> int:
    """Pipeline rank of a (virtual) stage: stage s runs on rank s mod pp (megatron's interleaving)."""
    return stage % pp


@dataclass(frozen=True)
class Move:
    """New position `dst_pos` (on stage dst_stage) is initialised from old layer `src_layer`
    (on stage src_stage). Stages are virtual stages in layer order; with one model chunk
    per rank they are the pipeline ranks themselves."""

    dst_pos: int
    src_layer: int
    src_stage: int
    dst_stage: int
    is_new: bool
    pp: int

    @property
    def src_rank(self) -> int:
        return rank_of(self.src_stage, self.pp)

    @property
    def dst_rank(self) -> int:
        return rank_of(self.dst_stage, self.pp)

    @property
    def local(self) -> bool:
        """Both ends on one pipeline rank (possibly different model chunks): a copy, no transfer."""
        return self.src_rank == self.dst_rank


def transfer_plan(
    growth: Growth, old_split: tuple[int, ...], new_split: tuple[int, ...], pp: int | None = None
) -> tuple[Move, ...]:
    """Every position of the grown model with where its weights come from. The splits list
    layers per (virtual) stage in layer order; `pp` pipeline ranks (default: one stage each)."""
    if sum(old_split) != growth.old_depth or sum(new_split) != growth.new_depth:
        raise ValueError(
            f"splits {old_split} -> {new_split} do not match depths {growth.old_depth} -> {growth.new_depth}"
        )
    if len(old_split) != len(new_split):
        raise ValueError(f"splits {old_split} -> {new_split} have different numbers of stages")
    pp = len(old_split) if pp is None else pp
    if len(old_split) % pp:
        raise ValueError(f"{len(old_split)} stages do not interleave over {pp} pipeline ranks")
    old_stage, new_stage = stage_of(old_split), stage_of(new_split)
    new = set(growth.new_positions)
    return tuple(Move(j, s, old_stage[s], new_stage[j], j in new, pp) for j, s in enumerate(growth.source_map))
