"""The device a process computes on, decided once and passed down (torchtitan's
device_type/device_module): init_distributed puts it in the process's Layout, resolve_run
derives precision and kernels from it and hands it to the EngineSpec, and the engine, the
growth executor and the training loop ask it instead of torch.cuda.is_available().

One GPU per process (torchrun's LOCAL_RANK) or the CPU; on the CPU the engine runs inside
compat.cpu's context (engine.distributed.device_context)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class Device:
    """Where tensors live: "cuda" (this process's GPU) or "cpu"."""

    type: Literal["cuda", "cpu"]

    @classmethod
    def local(cls) -> Device:
        """The device this process has: its GPU when there is one."""
        return cls("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def is_gpu(self) -> bool:
        return self.type == "cuda"

    @property
    def module(self):
        """torch.cuda or torch.cpu (synchronize, memory queries)."""
        return getattr(torch, self.type)

    @property
    def backend(self) -> str:
        """The torch.distributed backend for this device."""
        return "nccl" if self.is_gpu else "gloo"

    def empty_cache(self) -> None:
        """Give the caching allocator's idle blocks back (a no-op on the CPU)."""
        if self.is_gpu:
            torch.cuda.empty_cache()

    def interpret_triton_on_cpu(self) -> None:
        """On the CPU, have Triton's interpreter run the kernels (TRITON_INTERPRET=1) unless the
        user chose otherwise; on a GPU, nothing. Triton reads the variable when it is first
        imported (its own jit functions, `tl.sum` among them, are defined then), so the entry
        points that run our kernels on a CPU call this before anything imports triton: the test
        suite, `grow-megatron bench --dry-run`, tools/bench_kernels.py --dry-run and
        tools/gpu_correct.py. Training does not: there `model.kernels: on` on a CPU is refused
        in one line unless the user set the variable (engine/resolve.py)."""
        if not self.is_gpu:
            os.environ.setdefault("TRITON_INTERPRET", "1")
