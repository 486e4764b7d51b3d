"""The ModuleSpec of our decoder layer: where our modules enter megatron's GPTModel.

Kernel choices (fused norm, SwiGLU, RoPE, loss) are made here and in the modules from the
config switch, never inside the model's structure; parallel linears stay megatron's.
"""

from __future__ import annotations

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


def decoder_layer_spec(fused_swiglu: bool = False, fp8: bool = False) -> ModuleSpec:
    """Pre-norm LLaMA layer: ScaledRMSNorm -> RoPE + SDPA self-attention -> ScaledRMSNorm -> SwiGLU MLP.

    The norms and RoPE switch to their Triton kernels inside our modules (they read the
    config); with fused_swiglu the MLP's activation becomes the fused SwiGLU module. With fp8 the four linears
    run their matmuls in FP8 (model/fp8.py)."""
    column, row = (
        (Fp8ColumnParallelLinear, Fp8RowParallelLinear) if fp8 else (ColumnParallelLinear, GrowRowParallelLinear)
    )
    return ModuleSpec(
        module=GrowTransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=ScaledRMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column,
                    core_attention=SDPAttention,
                    linear_proj=row,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=ScaledRMSNorm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(
                    linear_fc1=column, linear_fc2=row, activation_func=FusedSwiGLU if fused_swiglu else None
                ),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )
