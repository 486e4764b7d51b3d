"""The public API the model integration calls: names, signatures, availability helper."""

import inspect
import os

import torch

import grow_megatron.kernels as K

EXPECTED = {
    "rms_norm": "(x, weight, eps=1e-05, scale=1.0, residual=None)",
    "rms_norm_ref": "(x, weight, eps=1e-05, scale=1.0, residual=None)",
    "swiglu": "(gate, up)",
    "swiglu_ref": "(gate, up)",
    "swiglu_fused": "(x)",
    "swiglu_fused_ref": "(x)",
    "apply_rope": "(q, k, cos, sin)",
    "apply_rope_ref": "(q, k, cos, sin)",
    "fused_linear_cross_entropy": "(hidden, weight, targets, ignore_index=-100, chunk_size=None)",
    "fused_linear_cross_entropy_ref": "(hidden, weight, targets, ignore_index=-100, chunk_size=None)",
    "triton_available": "(device=None) -> 'bool'",  # postponed annotations
}


def test_signatures():
    for name, sig in EXPECTED.items():
        assert name in K.__all__, name
        assert str(inspect.signature(getattr(K, name))) == sig, name
    for cls in ("RMSNorm", "SwiGLU", "RotaryEmbedding", "FusedLinearCrossEntropy"):
        assert issubclass(getattr(K, cls), torch.nn.Module)


def test_triton_available_follows_device_and_interpreter():
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    assert K.triton_available("cpu") is interp
    assert K.triton_available(torch.zeros(1)) is interp
    assert K.triton_available(torch.device("cuda")) is torch.cuda.is_available()
    assert K.triton_available() is (torch.cuda.is_available() or interp)
    assert K.triton_available("meta") is False
