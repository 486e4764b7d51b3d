"""Build megatron GPTModel chunks from our ModelConfig and ModuleSpec."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from grow_megatron.config.model import ModelConfig
from grow_megatron.model.modules import GrowGPTModel, linear_cross_entropy
from grow_megatron.model.spec import decoder_layer_spec, norm_spec


@dataclass
class GrowTransformerConfig(TransformerConfig):
    """megatron's TransformerConfig plus the switches our modules read."""

    grow_ln_scaling: bool = False
    """LN-Scaling: pre-norm outputs of the layer at position l scaled by 1/sqrt(l)."""
    grow_kernels: tuple = ()
    """The Triton kernels that run (names of kernels/select.py's KERNELS); the others take the
    PyTorch reference path. The one kernel switch: build_model_chunk turns it into the layer
    spec (model/spec.py) and the fused loss; megatron's use_te_activation_func follows it."""
    grow_rope_theta: float = 10000.0
    """RoPE base, read by SDPAttention (which applies RoPE)."""
    grow_init_seed: int = 0
    """Seed of the initial weights; each layer's draw depends on it and the layer's global position."""
    grow_fp8: str = "off"
    """model.fp8: the torchao float8 recipe of the layers' linears (off: none)."""
    grow_fp8_emulate: bool = False
    """model.fp8_emulate: FP8 matmuls emulated in high precision (CPU tests)."""
    grow_compile: bool = False
    """model.compile: each transformer layer under torch.compile."""

    def __post_init__(self) -> None:
        # megatron's MLP applies a spec'd activation module to the whole gated fc1 output only
        # when use_te_activation_func is set (the name is megatron's): that is where our fused
        # SwiGLU plugs in, so it follows the kernel switch (grow_kernels: the kernels that run).
        self.use_te_activation_func = "swiglu" in self.grow_kernels
        super().__post_init__()


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    """An init method that leaves the (about to be overwritten) tensor as allocated."""
    return tensor


def make_transformer_config(
    model: ModelConfig,
    *,
    num_layers: int,
    params_dtype: torch.dtype = torch.float32,
    bf16: bool = False,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    pipeline_layout=None,
    use_kernels: bool = False,
    seed: int = 0,
    init_weights: bool = True,
    fp8: str = "off",
    fp8_emulate: bool = False,
    compile: bool = False,
    kernels: tuple[str, ...] | None = None,
    **megatron_options,
) -> GrowTransformerConfig:
    """`kernels`: the Triton kernels to run; None = all of them with use_kernels, none without.
    megatron_options: further TransformerConfig fields (sequence parallelism, recompute, overlapped
    p2p: engine.build.ScaleOptions.transformer_options)."""
    if kernels is None:
        kernels = _all_kernels() if use_kernels else ()
    return GrowTransformerConfig(
        num_layers=num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.kv_heads,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_std,
        # Weights are drawn on the host for the full (unsharded) tensor and then split, so a
        # run at any TP size starts from the same weights as the single-rank run.
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=bf16,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        pipeline_model_parallel_layout=pipeline_layout,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        grow_ln_scaling=model.ln_scaling,
        # A grown or resumed model's weights are all copied in afterwards: skip the random draws
        # but keep megatron's initialisation path, which also tags tensor-parallel params
        # (perform_initialization=False would skip that tagging and break grad-norm clipping).
        **(
            {}
            if init_weights
            else {"init_method": _keep, "output_layer_init_method": _keep, "embedding_init_method": _keep}
        ),
        grow_kernels=tuple(kernels),
        grow_init_seed=seed,
        grow_rope_theta=model.rope_theta,
        grow_fp8=fp8,
        grow_fp8_emulate=fp8_emulate,
        grow_compile=compile,
        **megatron_options,
    )


def _all_kernels() -> tuple[str, ...]:
    # Imported only when kernels are wanted: the reference path must not need triton.
    from grow_megatron.kernels.select import KERNELS

    return KERNELS


def build_model_chunk(
    config: GrowTransformerConfig,
    model: ModelConfig,
    vocab_size: int,
    num_local_layers: int | None = None,
    vp_stage: int | None = None,
) -> GrowGPTModel:
    """The GPTModel chunk of this pipeline rank (all of it when PP = 1)."""
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if num_local_layers is None:
        num_local_layers = config.num_layers // config.pipeline_model_parallel_size
    layer_spec = decoder_layer_spec(config.grow_kernels, fp8=config.grow_fp8 != "off")
    spec = TransformerBlockSubmodules(
        layer_specs=[layer_spec] * num_local_layers, layer_norm=norm_spec(config.grow_kernels)
    )
    model = GrowGPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=model.seq_length,
        pre_process=pre,
        post_process=post,
        parallel_output=True,
        share_embeddings_and_output_weights=True,
        position_embedding_type="none",  # RoPE is applied by SDPAttention
        vp_stage=vp_stage,
    )
    # The fused loss needs the whole vocabulary on one rank.
    model.fused_loss = "loss" in config.grow_kernels and config.tensor_model_parallel_size == 1
    if config.grow_compile:
        compile_layers(model)
        if config.tensor_model_parallel_size == 1 and not model.fused_loss:
            # The output layer and the loss as one graph (the whole vocabulary is on this rank).
            model.compiled_loss = torch.compile(linear_cross_entropy)
    return model


def compile_layers(chunk: GrowGPTModel) -> None:
    """torch.compile each transformer layer in place (per layer, as torchtitan compiles its
    blocks). The layers share one code object and dynamo treats each module's parameters as
    graph inputs, so the layers of a chunk, and those a growth builds, reuse the graphs the first
    layer compiled: nothing in a layer's traced code depends on its position (SDPAttention's
    RoPE table is rebuilt in the graph instead of read from a per-layer cache)."""
    for layer in chunk.decoder.layers:
        layer.compile()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (its own counter): what a run's log
    reports at start and after each growth."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
