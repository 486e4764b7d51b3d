"""CPU compatibility layer for megatron-core (the one documented exception to "never patch").

megatron-core assumes CUDA on paths we use (docs/architecture.md, "The CPU compatibility layer"):
`torch.cuda.current_device()` as the device of new tensors, `torch.cuda.synchronize()`,
literal `device="cuda"` allocations, `Tensor.cuda()`, and `param.type() ==
'torch.cuda.FloatTensor'` checks in the distributed optimizer. Inside `cpu_compat()`:

- `torch.cuda.current_device` answers the CPU device and `torch.cuda.synchronize` is a no-op
  (these are torch attributes, restored on exit; megatron's files are never touched);
- a TorchFunctionMode rewrites any CUDA device argument to CPU, makes `Tensor.cuda()` a no-op
  and answers the CUDA type name from `Tensor.type()`, so megatron's dtype checks accept CPU
  tensors.

Activation recompute (megatron's CheckpointFunction) saves and restores the CUDA RNG state
around each recomputed region. On CPU there is no CUDA generator (the CPU generator, which
dropout uses here, is saved beside it): `torch.cuda.random.get_rng_state` answers an empty
state, and the restore, which torch queues for a CUDA initialisation that can never happen,
is dropped instead of piling up in `torch.cuda._queued_calls` for the life of the process.

It is entered once per process by the engine when no GPU is present, so the same engine
(TP/PP/DP included, with gloo) runs on a laptop and in CI. Nothing here is active on GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")


def needs_cpu_compat() -> bool:
    return not torch.cuda.is_available()


def _is_cuda(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # A bare int is how torch.cuda.current_device() answers; on CPU it can only mean "the GPU".
    return isinstance(dev, int) and not isinstance(dev, bool)


class _CudaToCpuMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # megatron compares against 'torch.cuda.FloatTensor' etc. to pick dtype paths.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs["device"] = _CPU
        if func in (torch.Tensor.to,) and args and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


class _NoCudaQueue(list):
    """torch.cuda's queue of calls deferred to CUDA initialisation, on a machine where CUDA is
    never initialised: nothing is kept (megatron's recompute restores the CUDA RNG state through
    it twice per recomputed region)."""

    def append(self, item) -> None:
        pass


def _no_cuda_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


@contextlib.contextmanager
def cpu_compat() -> Iterator[None]:
    """Let megatron-core run on CPU tensors for the duration of the context."""
    saved = (
        torch.cuda.current_device,
        torch.cuda.synchronize,
        torch.cuda.random.get_rng_state,
        torch.cuda._queued_calls,
    )
    torch.cuda.current_device = lambda: _CPU  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.random.get_rng_state = _no_cuda_rng_state  # type: ignore[assignment]
    torch.cuda._queued_calls = _NoCudaQueue(saved[3])  # type: ignore[attr-defined]
    try:
        with _CudaToCpuMode():
            yield
    finally:
        (
            torch.cuda.current_device,
            torch.cuda.synchronize,
            torch.cuda.random.get_rng_state,
            torch.cuda._queued_calls,
        ) = saved
