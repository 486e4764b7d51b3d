"""Triton kernels for grow_megatron, each beside its plain-PyTorch reference.

Installed as `grow_megatron.kernels` (setup.py maps this folder): a different PyPI project owns
the top-level name `kernels`. On CPU the kernels run only under the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported); `triton_available` says whether they can run.
"""
from ._utils import triton_available
from .fused_linear_ce import (
    FusedLinearCrossEntropy,
    FusedLinearCrossEntropyFunction,
    fused_linear_cross_entropy,
    fused_linear_cross_entropy_ref,
)
from .rmsnorm import RMSNorm, RMSNormFunction, rms_norm, rms_norm_ref
from .rope import RoPEFunction, RotaryEmbedding, apply_rope, apply_rope_ref, rope_cos_sin
from .swiglu import SwiGLU, SwiGLUFunction, SwiGLUFusedFunction, swiglu, swiglu_fused, swiglu_fused_ref, swiglu_ref

__all__ = [
    "triton_available",
    "rms_norm", "rms_norm_ref", "RMSNorm", "RMSNormFunction",
    "swiglu", "swiglu_ref", "swiglu_fused", "swiglu_fused_ref", "SwiGLU", "SwiGLUFunction", "SwiGLUFusedFunction",
    "fused_linear_cross_entropy", "fused_linear_cross_entropy_ref", "FusedLinearCrossEntropy",
    "FusedLinearCrossEntropyFunction",
    "apply_rope", "apply_rope_ref", "rope_cos_sin", "RotaryEmbedding", "RoPEFunction",
]
