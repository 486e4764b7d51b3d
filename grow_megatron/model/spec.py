"""The ModuleSpec of our decoder layer: where our modules enter megatron's GPTModel.

The kernel choice (which Triton kernels run: fused norm, SwiGLU, RoPE) enters the model here
and only here, as the modules' constructor arguments; the modules read no switch of their own.
Parallel linears stay megatron's.
"""

from __future__ import annotations

from collections.abc import Collection

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from grow_megatron.model.fp8 import Fp8ColumnParallelLinear, Fp8RowParallelLinear
from grow_megatron.model.modules import (
    FusedSwiGLU,
    GrowRowParallelLinear,
    GrowTransformerLayer,
    ScaledRMSNorm,
    SDPAttention,
)


def norm_spec(kernels: Collection[str] = ()) -> ModuleSpec:
    """ScaledRMSNorm, on its Triton kernel when "rmsnorm" is among `kernels` (the layers' norms
    and the final norm)."""
    return ModuleSpec(module=ScaledRMSNorm, params={"use_kernel": "rmsnorm" in kernels})


def decoder_layer_spec(kernels: Collection[str] = (), fp8: bool = False) -> ModuleSpec:
    """Pre-norm LLaMA layer: ScaledRMSNorm -> RoPE + SDPA self-attention -> ScaledRMSNorm -> SwiGLU MLP.

    `kernels`: the Triton kernels that run (names of kernels/select.py's KERNELS); the others
    take their PyTorch reference path. With fp8 the four linears run their matmuls in FP8
    (model/fp8.py)."""
    column, row = (
        (Fp8ColumnParallelLinear, Fp8RowParallelLinear) if fp8 else (ColumnParallelLinear, GrowRowParallelLinear)
    )
    norm = norm_spec(kernels)
    return ModuleSpec(
        module=GrowTransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column,
                    core_attention=ModuleSpec(module=SDPAttention, params={"use_kernel": "rope" in kernels}),
                    linear_proj=row,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(
                    linear_fc1=column,
                    linear_fc2=row,
                    activation_func=FusedSwiGLU if "swiglu" in kernels else None,
                ),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )
