"""Growth by ownership: which data-parallel rank sends which piece of a parameter's optimizer
state to which, when the parameter's DP owners change (pure integer planning, no torch).

megatron's distributed optimizer pads every gradient bucket to a multiple of DP and gives DP
rank r the r-th of DP equal parts of it; a parameter lying at [start, end) of the buffer is
owned, piece by piece, by the ranks whose parts it overlaps (`dp_spans`). A growth rebuilds the
buffers at the new depth, so the parts move. Instead of assembling every parameter's whole state
on every rank, each rank receives only the pieces of its new spans that another rank held
before (`ownership_plan`); the pieces a rank already holds are copied locally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]
"""[start, end) of a flattened parameter."""


def dp_spans(start: int, end: int, bucket_offset: int, bucket_numel: int, dp: int) -> tuple[Span | None, ...]:
    """Each DP rank's span of the parameter stored at [start, end) of a buffer whose bucket
    holding it starts at `bucket_offset` and has `bucket_numel` elements (padded to a multiple
    of dp); None for a rank that owns none of it."""
    if dp < 1 or bucket_numel % dp:
        raise ValueError(f"a bucket of {bucket_numel} elements does not split into {dp} equal DP parts")
    if not bucket_offset <= start <= end <= bucket_offset + bucket_numel:
        raise ValueError(
            f"parameter [{start}, {end}) lies outside its bucket [{bucket_offset}, {bucket_offset + bucket_numel})"
        )
    part = bucket_numel // dp
    out = []
    for r in range(dp):
        a, b = max(start, bucket_offset + r * part), min(end, bucket_offset + (r + 1) * part)
        out.append((a - start, b - start) if b > a else None)
    return tuple(out)


@dataclass(frozen=True, order=True)
class Piece:
    """DP rank `dst` receives elements [start, end) of parameter `param` (its index in the
    unit being moved) from DP rank `src`, which owned them before; src == dst: a local copy."""

    src: int
    dst: int
    param: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def _check_partition(spans: Sequence[Span | None], what: str) -> int:
    """The number of elements the ranks' spans tile, in rank order without gap or overlap."""
    pos = 0
    for r, s in enumerate(spans):
        if s is None:
            continue
        if s[0] != pos or s[1] <= s[0]:
            raise ValueError(f"{what}: DP rank {r}'s span {s} does not continue the spans before it at {pos}")
        pos = s[1]
    return pos


def ownership_plan(old: Sequence[Sequence[Span | None]], new: Sequence[Sequence[Span | None]]) -> tuple[Piece, ...]:
    """old[i][r] / new[i][r]: DP rank r's span of parameter i before / after (None: none).
    Returns every piece of every new span with the rank that held it, sorted by (src, dst,
    param, start): a sender packs, and a receiver unpacks, its pieces in that order."""
    if len(old) != len(new):
        raise ValueError(f"{len(old)} source parameters for {len(new)} destination parameters")
    pieces = []
    for i, (o, n) in enumerate(zip(old, new)):
        if len(o) != len(n):
            raise ValueError(f"parameter {i}: {len(o)} DP ranks before, {len(n)} after")
        size_o, size_n = _check_partition(o, f"parameter {i} before"), _check_partition(n, f"parameter {i} after")
        if size_o != size_n:
            raise ValueError(f"parameter {i}: {size_o} elements before, {size_n} after")
        for dst, ns in enumerate(n):
            if ns is None:
                continue
            for src, os_ in enumerate(o):
                if os_ is None:
                    continue
                a, b = max(ns[0], os_[0]), min(ns[1], os_[1])
                if a < b:
                    pieces.append(Piece(src, dst, i, a, b))
    return tuple(sorted(pieces))


def exchange_sizes(plan: Sequence[Piece], rank: int, dp: int) -> tuple[list[int], list[int]]:
    """Elements `rank` sends to, and receives from, each DP rank (its own entry 0: local copies
    are no traffic), per state tensor."""
    send, recv = [0] * dp, [0] * dp
    for p in plan:
        if p.src == p.dst:
            continue
        if p.src == rank:
            send[p.dst] += p.size
        if p.dst == rank:
            recv[p.src] += p.size
    return send, recv
