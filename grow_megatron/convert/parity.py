"""The parity check of a conversion: native logits against Hugging Face logits."""

from __future__ import annotations

import torch

from grow_megatron.convert.api import NativeSource, native_to_hf_model
from grow_megatron.convert.load import load_as_hf
from grow_megatron.convert.native import NativeReader, native_logits, resolve_checkpoint


def compare_logits(
    ckpt: str, hf: str | None = None, *, tokens: torch.Tensor | None = None, config: str | None = None, seed: int = 0
) -> float:
    """Max |native logits - HF logits| (fp32) on `tokens` (default: 2 random rows of 16 tokens;
    `text_tokens` makes them from real text).

    hf: an exported directory; None compares against the in-memory export. The native side is an
    fp32 engine, which `load_checkpoint` fills with the optimizer's fp32 main params; so for a
    bf16 checkpoint the in-memory export is made from those too (a bf16 export differs by bf16
    rounding, ~1e-3)."""
    main = NativeReader(resolve_checkpoint(ckpt)[0]).dtype != torch.float32
    src = NativeSource(ckpt, config, main_params=main)
    if tokens is None:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, src.shape.vocab_size, (2, min(16, src.shape.seq_length)), generator=g)
    model = load_as_hf(hf)[0] if hf else native_to_hf_model(src, torch.float32)
    with torch.no_grad():
        ref = model(tokens).logits.float()  # [b, s, V]
    from grow_megatron.engine.distributed import device_context  # megatron-core: see convert/native.py

    with device_context():
        ours = native_logits(src.ckpt_dir, src.run.model, tokens, loop=src.loop)
    return float((ours - ref).abs().max())
