"""A data-parallel rank's flat range of a parameter as rectangular checkpoint pieces.

megatron's distributed optimizer gives each DP rank a contiguous flat range [s, e) of every
parameter (of its TP x PP slice): its fp32 main copy and AdamW moments exist only there.
megatron saves such ranges as `ShardedTensor`s with a `flattened_range`, which its torch_dist
backend refuses on CPU (docs/architecture.md, "The CPU compatibility layer"). A flat range of a row-major tensor [rows, cols] is
however a union of at most three rectangles: the tail of its first row, a block of whole rows,
and the head of its last row. Each of these is an ordinary (uneven, `axis_fragmentations=None`)
ShardedTensor at a global offset, which torch DCP stores and reshards like any other chunk.
So every DP rank writes exactly its own range (the ranks' ranges partition the tensor) with
no communication, and a rank of any other layout reads exactly its own range back: the same
three-rectangle decomposition of its range, which DCP assembles from whatever chunks overlap.

The global tensors are the model's (same keys, shapes, offsets as megatron's model state
dict), so checkpoints written whole per slice (the first format) and whole-tensor readers
(offline growth, export) need nothing special.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory


@dataclass(frozen=True)
class RowSegment:
    """Local rows [row0, row0 + rows) of a parameter, stored contiguously in a global tensor
    from `offset` (all global axes, leading layer axes included) on the row axis `axis`."""

    row0: int
    rows: int
    key: str
    global_shape: tuple[int, ...]
    offset: tuple[int, ...]
    axis: int


def _segment(sh: ShardedTensor, row0: int) -> RowSegment:
    return RowSegment(
        row0, sh.local_shape[0], sh.key, tuple(sh.global_shape), tuple(sh.global_offset), sh.prepend_axis_num
    )


def row_segments(sh, param: torch.Tensor) -> list[RowSegment]:
    """Where the rows of `param` live in the checkpoint, from its model ShardedTensor (one
    segment) or factory (megatron's gated fc1: gate rows and up rows go to two places)."""
    if param.dim() > 2:
        raise ValueError(f"{sh.key}: {param.dim()}-d parameters are not row-major matrices")
    if isinstance(sh, ShardedTensor):
        return [_segment(sh, 0)]
    assert isinstance(sh, ShardedTensorFactory), type(sh)
    # Run the factory on the parameter's row numbers (an expanded view, no memory): each
    # ShardedTensor it builds then says which local rows it takes.
    rows = torch.arange(param.shape[0]).view((-1,) + (1,) * (param.dim() - 1)).expand(param.shape)
    built = sh.build_fn(sh.key, rows, sh.replica_id, None)
    built = (
        list(built.values())
        if isinstance(built, dict)
        else list(built)
        if isinstance(built, (list, tuple))
        else [built]
    )
    out = []
    for part in built:
        idx = part.data.reshape(part.data.shape[0], -1)[:, 0]
        if part.data.shape[1:] != param.shape[1:] or not torch.equal(idx, torch.arange(idx[0], idx[0] + len(idx))):
            raise ValueError(f"{sh.key}: the sharding factory does not split along rows")
        out.append(_segment(part, int(idx[0])))
    return out


def dp_replica_id(replica_id):
    """The model's replica id with the data-parallel component cleared: every DP rank's range
    is a main replica (the ranges are disjoint); TP / pipeline replicas stay non-main."""
    if isinstance(replica_id, tuple):
        return replica_id[:-1] + (0,)
    return 0


def pieces(
    segments: list[RowSegment], flat: torch.Tensor, start: int, row_len: int, key: str, replica_id
) -> list[ShardedTensor]:
    """ShardedTensors covering the flat range [start, start + flat.numel()) of a parameter with
    rows of `row_len` elements; `flat` holds that range (views of it become the pieces' data).
    `key`: the checkpoint key (the segments' model key, or a state's key for it)."""
    end = start + flat.numel()
    out = []
    for seg in segments:
        a, b = max(start, seg.row0 * row_len), min(end, (seg.row0 + seg.rows) * row_len)
        while a < b:
            row, col = divmod(a, row_len)
            if col or b - a < row_len:  # a partial row: [col, col + n) of one row
                n = min(row_len - col, b - a)
                rect = (1, n)
            else:  # whole rows
                n = (b - a) // row_len * row_len
                rect = (n // row_len, row_len)
            out.append(_piece(seg, flat[a - start : a - start + n], row - seg.row0, col, rect, key, replica_id))
            a += n
    return out


def _piece(
    seg: RowSegment, data: torch.Tensor, row: int, col: int, rect: tuple[int, int], key: str, replica_id
) -> ShardedTensor:
    lead = (1,) * seg.axis  # the layer axis (and any other prepended axis) as explicit size-1 axes
    two_d = len(seg.global_shape) - seg.axis == 2
    local = lead + (rect if two_d else (rect[0] * rect[1],))
    offset = list(seg.offset)
    offset[seg.axis] += row if two_d else row + col
    if two_d:
        offset[seg.axis + 1] += col
    return ShardedTensor(
        key=key,
        data=data.view(local),
        dtype=data.dtype,
        local_shape=local,
        global_shape=seg.global_shape,
        global_offset=tuple(offset),
        axis_fragmentations=None,
        replica_id=replica_id,
        prepend_axis_num=0,
    )


def param_pieces(
    sh, param: torch.Tensor, flat: torch.Tensor, start: int, key: str | None = None
) -> list[ShardedTensor]:
    """`pieces` for a model ShardedTensor/factory `sh` of `param`: rows of param.shape[1:]."""
    row_len = param[0].numel() if param.dim() == 2 else 1
    return pieces(row_segments(sh, param), flat, start, row_len, key or sh.key, dp_replica_id(sh.replica_id))
