"""Counting what a piece of code sends and allocates (checkpoint and growth benchmarks, tests).

`count_comm`: bytes this rank sends through torch.distributed's collectives and point-to-point
calls, by call name, for whatever runs inside the block (our code, megatron's and DCP's alike:
they all call through the `torch.distributed` module). Tensor calls count what a ring
implementation sends (all-reduce 2(p-1)/p of the tensor, all-gather (p-1) x the input, a send
its tensor); object calls count the pickled size of the rank's argument.

`allocation_peak`: the highest amount of torch tensor memory allocated inside the block
above what was allocated when it started, from the profiler's allocation/free records (the
CPU allocator has no memory statistics of its own; on a GPU these are the device's events).
Only tensors count: Python objects (pickled plans, dicts) are not torch allocations.
"""

from __future__ import annotations

import contextlib
import pickle
from collections import Counter
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

# Bytes a rank puts on the wire per call, for a tensor of S bytes (the argument named by the
# index) in a group of p ranks, as a ring / point-to-point implementation sends them.
_TENSOR_CALLS = {
    "all_reduce": (0, lambda S, p: 2 * (p - 1) * S // p),
    "all_gather_into_tensor": (1, lambda S, p: (p - 1) * S),  # S: this rank's input
    "all_gather": (1, lambda S, p: (p - 1) * S),
    "reduce_scatter_tensor": (1, lambda S, p: (p - 1) * S // p),  # S: the full input
    "all_to_all_single": (1, lambda S, p: (p - 1) * S // p),  # equal blocks; with split sizes: the others' blocks
    "broadcast": (0, lambda S, p: S if p > 1 else 0),  # counted on every rank: an upper bound for non-roots
    "reduce": (0, lambda S, p: S if p > 1 else 0),
    "send": (0, lambda S, p: S),
    "isend": (0, lambda S, p: S),
    "recv": (0, lambda S, p: 0),
    "irecv": (0, lambda S, p: 0),
}
_OBJECT_CALLS = {"all_gather_object": 1, "gather_object": 0, "broadcast_object_list": 0, "scatter_object_list": 1}


def _nbytes(x) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


@contextlib.contextmanager
def count_comm() -> Iterator[Counter]:
    """{call name: bytes} (and {name + '#calls': count}) of the torch.distributed calls made inside."""
    counts: Counter = Counter()
    saved = {}

    def wrap(name, index, size):
        fn = getattr(dist, name)

        def counted(*args, **kwargs):
            arg = args[index] if len(args) > index else next(iter(kwargs.values()), None)
            group = kwargs.get("group")
            splits = args[3] if len(args) > 3 else kwargs.get("input_split_sizes")
            if name == "all_to_all_single" and splits:  # uneven: all but this rank's own block
                row = _nbytes(arg) // max(1, arg.shape[0]) if arg.numel() else 0
                counts[name] += row * (sum(splits) - splits[dist.get_rank(group)])
            else:
                counts[name] += size(arg, dist.get_world_size(group) if dist.is_initialized() else 1)
            counts[name + "#calls"] += 1
            return fn(*args, **kwargs)

        saved[name] = fn
        setattr(dist, name, counted)

    def pickled(obj) -> int:
        try:
            return len(pickle.dumps(obj))
        except Exception:  # noqa: BLE001 - an unpicklable placeholder counts as nothing
            return 0

    try:
        for name, (i, wire) in _TENSOR_CALLS.items():
            wrap(name, i, lambda x, p, wire=wire: wire(_nbytes(x), p))
        for name, i in _OBJECT_CALLS.items():
            wrap(name, i, lambda x, p: pickled(x))
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def tensor_bytes(counts: Counter) -> int:
    """Bytes of tensor collectives and point-to-point messages in a count_comm result."""
    return sum(v for k, v in counts.items() if k in _TENSOR_CALLS)


@contextlib.contextmanager
def allocation_peak() -> Iterator[dict]:
    """{'peak': bytes}: the highest net tensor allocation inside the block (set when it ends)."""
    out = {"peak": 0}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    now = peak = 0
    for e in events:  # frees of tensors allocated before the block lower `now`: they are gone too
        now += e.nbytes()
        peak = max(peak, now)
    out["peak"] = peak
