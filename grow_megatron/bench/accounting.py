"""Counting what a piece of code sends and allocates (checkpoint and growth benchmarks, tests).

`count_comm`: bytes handed to torch.distributed's collectives and point-to-point calls, by
call name, for whatever runs inside the block (our code, megatron's and DCP's alike: they all
call through the `torch.distributed` module). Tensor calls count the tensor bytes this rank
contributes (sends, or its input to a collective); object calls count the pickled size.

`allocation_peak`: the highest amount of torch tensor memory allocated inside the block
above what was allocated when it started, from the profiler's allocation/free records (the
CPU allocator has no memory statistics of its own; on a GPU these are the device's events).
Only tensors count: Python objects (pickled plans, dicts) are not torch allocations.
"""
from __future__ import annotations

import contextlib
import pickle
from collections import Counter
from typing import Iterator

import torch
import torch.distributed as dist

_TENSOR_CALLS = {  # name -> index of the argument whose bytes this rank contributes
    "all_reduce": 0, "broadcast": 0, "send": 0, "isend": 0, "recv": 0, "irecv": 0, "reduce": 0,
    "all_gather_into_tensor": 1, "reduce_scatter_tensor": 1, "all_gather": 1, "all_to_all_single": 1,
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
            counts[name] += size(arg)
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
        for name, i in _TENSOR_CALLS.items():
            wrap(name, i, _nbytes)
        for name, i in _OBJECT_CALLS.items():
            wrap(name, i, pickled)
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
    from torch.profiler import ProfilerActivity, profile

    out = {"peak": 0}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    now = peak = 0
    for e in events:  # frees of tensors allocated before the block lower `now`: they are gone too
        now += e.nbytes()
        peak = max(peak, now)
    out["peak"] = peak
