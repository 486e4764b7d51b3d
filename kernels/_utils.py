"""Small helpers shared by the kernels: output allocation, launch sizing, availability."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate a buffer every element of which a kernel must write.

    Every kernel output goes through here so that a test can swap in a NaN-filled allocator
    (monkeypatch) and catch elements the kernel forgot to write.
    """
    return torch.empty(shape, dtype=dtype, device=device)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device=None) -> bool:
    """Whether our Triton kernels can run on `device` (a torch.device, str, tensor or None).

    CUDA tensors need a CUDA GPU; CPU tensors need the Triton interpreter (TRITON_INTERPRET=1,
    set before triton is first imported). None asks about the default place tensors would go:
    true when either is possible.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if isinstance(device, torch.Tensor):
        device = device.device
    if device is None:
        return torch.cuda.is_available() or interpreting()
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return interpreting()
    return False


def num_programs_persistent(device: torch.device, work_items: int, per_sm: int = 2) -> int:
    """Program count for a persistent grid: enough to fill every SM, never more than the work."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        # The interpreter runs programs one after another: few programs, little overhead.
        sms = 2
    return max(1, min(work_items, sms * per_sm))


def emulate_rtne() -> bool:
    """The interpreter casts fp32 -> bf16 by truncation; GPUs round to nearest even. Kernels
    take this as a constexpr so that CPU runs round like the GPU does (see `cast`)."""
    return interpreting()


@triton.jit
def cast(x, dtype: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    """x.to(dtype), rounding fp32 -> bf16 to nearest even under the interpreter too."""
    if EMULATE_RTNE and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        # Low 16 bits are zero now, so the interpreter's truncating cast is exact.
        return bits.to(tl.float32, bitcast=True).to(dtype)
    else:
        return x.to(dtype)
