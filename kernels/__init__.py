"""Triton kernels for grow_megatron, each beside its plain-PyTorch reference.

Installed as `grow_megatron.kernels` (setup.py maps this folder): Hugging Face's `kernels` project
owns the top-level name `kernels`, and transformers imports it. Wherever the repository root is on
sys.path (`python -m pytest`, `python -c`, a notebook started there), this folder would be found
first under that name, so imported as anything but `grow_megatron.kernels` it steps aside: it
loads the next `kernels` on sys.path in its place, or fails as if the folder were not there
(docs/architecture.md, "The name `kernels`"). On CPU the kernels run only under the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported); `triton_available` says whether they can run.
"""

if __name__ != "grow_megatron.kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    if __name__ != "kernels":
        raise ImportError(f"{__name__!r}: grow_megatron's Triton kernels are imported as grow_megatron.kernels")
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding this one
    _spec = importlib.machinery.PathFinder.find_spec(
        __name__, [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    )
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError(
            "No module named 'kernels' (the repository's kernels/ folder is grow_megatron.kernels)", name=__name__
        )
    _module = importlib.util.module_from_spec(_spec)
    # The import system returns what sys.modules holds for the name once this file has run.
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
else:
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
        "rms_norm",
        "rms_norm_ref",
        "RMSNorm",
        "RMSNormFunction",
        "swiglu",
        "swiglu_ref",
        "swiglu_fused",
        "swiglu_fused_ref",
        "SwiGLU",
        "SwiGLUFunction",
        "SwiGLUFusedFunction",
        "fused_linear_cross_entropy",
        "fused_linear_cross_entropy_ref",
        "FusedLinearCrossEntropy",
        "FusedLinearCrossEntropyFunction",
        "apply_rope",
        "apply_rope_ref",
        "rope_cos_sin",
        "RotaryEmbedding",
        "RoPEFunction",
    ]
