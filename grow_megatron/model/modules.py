"""Our modules, plugged into megatron's GPTModel through a ModuleSpec (see spec.py).

They hold no parallelism logic: tensor parallelism stays in megatron's column/row-parallel
linears around them; these only see per-rank shards ([s, b, heads_per_rank, head_dim]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, get_transformer_layer_offset
from megatron.core.utils import divide


def _kernels():
    """grow_megatron.kernels, imported on first use rather than with the model: triton reads
    TRITON_INTERPRET once, at its first import (a CPU benchmark sets it before anything runs),
    and takes seconds to import."""
    import grow_megatron.kernels as kernels

    return kernels


class ScaledRMSNorm(torch.nn.Module):
    """RMSNorm whose output is multiplied by `scale`, the LN-Scaling factor 1/sqrt(l) (docs/method.md §5).

    The factor belongs to the layer's position, not to its weights: the owning layer sets it
    from its layer number (GrowTransformerLayer.set_layer_number) and it is never a parameter,
    so a layer built at a new position after a growth gets its factor with no weight changed
    (model/looping.py sets it per application of a looped layer). scale = 1.0 is a plain
    RMSNorm (also the final norm).
    """

    def __init__(
        self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, use_kernel: bool = False, **_: object
    ):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Under sequence parallelism each TP rank normalises its own s/TP tokens, so the gain's
        # gradient is a partial sum: megatron's finalize_model_grads all-reduces the grads of
        # params marked this way over TP (its WrappedTorchNorm refuses sequence parallelism).
        self.weight.sequence_parallel = config.sequence_parallel
        self.eps = eps
        # The factor again as a 0-d buffer (in no state dict) for compiled layers: a Python float
        # is a constant to dynamo, so every new position (a growth's layers) would recompile.
        self.register_buffer("scale_t", torch.ones((), dtype=torch.float32), persistent=False)
        self.scale = 1.0
        self.use_kernel = use_kernel  # the spec's choice (model/spec.py)

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        # A new tensor, not an in-place write: a backward pending on the old factor keeps it
        # (model/looping.py changes the factor between applications of one layer).
        self._scale = float(value)
        self.scale_t = torch.full((), self._scale, dtype=torch.float32, device=self.scale_t.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [s, b, h]
        if self.use_kernel:
            return _kernels().rms_norm(x, self.weight, self.eps, scale=self.scale)
        if torch.compiler.is_compiling():
            # One graph for every position: the factor is a graph input (x 1.0 where there is none).
            # (a 0-d fp32 factor keeps x's dtype and is applied in fp32, as a Python float is)
            return _kernels().rms_norm_ref(x, self.weight, self.eps) * self.scale_t
        # Rounded as transformers' LlamaRMSNorm (HF logit parity): kernels/rmsnorm.py's reference.
        return _kernels().rms_norm_ref(x, self.weight, self.eps, self.scale)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, scale={self.scale:.4f}"


def native_gqa_is_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> bool:
    """Whether SDPA with `enable_gqa=True` runs this call (q [b, hq, s, d], k/v [b, hkv, s, d],
    causal) in a fused CUDA kernel (flash, memory-efficient or cuDNN), asked of torch's own
    dispatch checks.

    Why ask: where no fused kernel accepts unequal head counts (fp32 inputs, older GPUs, some
    torch versions' memory-efficient kernel), `enable_gqa=True` silently falls back to the math
    kernel, which materialises the [s, s] scores and is far slower than repeating k and v.
    CPU always answers False: its kernels would give results that differ in the last bits
    from the repeat path, and the CPU runs (README's main job, the tests) must stay bit-identical.
    """
    if not q.is_cuda or k.shape[1] == q.shape[1]:
        return False
    cuda = torch.backends.cuda
    params = cuda.SDPAParams(q, k, v, None, dropout_p, True, True)
    return any(
        can_use(params, False)
        for can_use in (cuda.can_use_flash_attention, cuda.can_use_efficient_attention, cuda.can_use_cudnn_attention)
    )


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, native_gqa: bool, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal SDPA on q [b, hq, s, d] and k, v [b, hkv, s, d] (hkv divides hq).

    native_gqa: let the kernel read each k/v head for its group of query heads (`enable_gqa`)
    instead of materialising k and v repeated to hq heads (hq/hkv times their bytes, written and
    read again, and their gradients summed back). Same function either way.
    """
    gqa = k.shape[1] != q.shape[1]
    if gqa and not native_gqa:
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p, enable_gqa=gqa and native_gqa
    )


class SDPAttention(MegatronModule):
    """Core attention: RoPE on q and k, then causal scaled_dot_product_attention.

    RoPE lives here rather than in megatron's SelfAttention so that the fused kernel and the
    reference path are one switch apart (GPTModel is built with position_embedding_type
    'none'). On GPU torch's SDPA dispatches to flash / cuDNN / memory-efficient kernels, so the
    [s, s] score matrix is never materialised (megatron's local DotProductAttention does).
    Same constructor and call signature as megatron's DotProductAttention.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        use_kernel: bool = False,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism")
        self.layer_number = layer_number
        tp = pg_collection.tp.size() if pg_collection is not None else 1
        self.heads = divide(config.num_attention_heads, tp)
        self.kv_heads = divide(config.num_query_groups, tp)
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.rope_base = float(getattr(config, "grow_rope_theta", 10000.0))
        self.use_kernel = use_kernel  # the spec's choice (model/spec.py)
        self._rope_cache: dict = {}
        self._native_gqa_cache: dict = {}

    def _cos_sin(self, s: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            # A per-layer cache would put a guard on each layer's dict (a recompile per layer);
            # in the graph the table is a few fused ops.
            return _kernels().rope_cos_sin(s, self.head_dim, self.rope_base, device)
        key = (s, str(device))
        if key not in self._rope_cache:
            self._rope_cache = {key: _kernels().rope_cos_sin(s, self.head_dim, self.rope_base, device)}
        return self._rope_cache[key]

    def _native_gqa(self, q, k, v, dropout_p: float) -> bool:
        """native_gqa_is_fused, asked once per layout rather than every step (one entry: the
        shapes change only with the sequence length or batch)."""
        if torch.compiler.is_compiling():
            # torch's dispatch checks do not trace, and a cache would guard per layer: compiled
            # layers repeat k and v (the same function).
            return False
        key = (
            q.shape,
            k.shape,
            q.stride(),
            k.stride(),
            v.stride(),
            q.dtype,
            q.device,
            dropout_p > 0,
            torch.is_grad_enabled() and q.requires_grad,
        )
        if key not in self._native_gqa_cache:
            self._native_gqa_cache = {key: native_gqa_is_fused(q, k, v, dropout_p)}
        return self._native_gqa_cache[key]

    def forward(
        self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        # query: [s, b, hq, d]; key/value: [s, b, hkv, d] (GQA: hkv divides hq)
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAttention supports neither packed sequences nor attention bias")
        s, b = query.shape[0], query.shape[1]
        cos, sin = self._cos_sin(s, query.device)
        kernels = _kernels()
        query, key = (kernels.apply_rope if self.use_kernel else kernels.apply_rope_ref)(query, key, cos, sin)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        dropout_p = self.dropout if self.training else 0.0
        out = causal_attention(
            q, k, v, native_gqa=self._native_gqa(q, k, v, dropout_p), scale=self.softmax_scale, dropout_p=dropout_p
        )
        return out.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)  # [s, b, hq*d]


class GrowRowParallelLinear(RowParallelLinear):
    """megatron's RowParallelLinear, handing its matmul the layer's own TP group where megatron
    passes None (it then looks the default group up, the same group, through a call that
    torch.compile cannot trace: a graph break in every compiled layer)."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        if kwargs.get("tp_group", 0) is None:
            kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(input, weight, *args, **kwargs)


class FusedSwiGLU(torch.nn.Module):
    """silu(gate) * up on megatron's gated fc1 output [..., 2f/tp] = [gate shard | up shard],
    in one Triton kernel. Plugged in as MLPSubmodules.activation_func (megatron then applies
    it to the whole fc1 output, which is exactly the fused form)."""

    def __init__(self, config: TransformerConfig, **_: object):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [s, b, 2f] -> [s, b, f]
        return _kernels().swiglu_fused(x)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        """Nothing: it holds no state. megatron's MLP.sharded_state_dict asks every child module
        for its part, so a checkpoint save with the kernels on failed without this (found by
        tools/gpu_correct.py's smoke run)."""
        return {}


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss of the output layer and cross entropy, on the whole vocabulary (TP = 1):
    hidden [s, b, h], weight [V, h], labels [b, s] -> loss [b, s] in fp32, as megatron's output
    layer + vocab-parallel cross entropy compute it. Written plainly for torch.compile, which
    fuses the softmax's passes over the [s*b, V] logits (megatron's eager cross entropy makes
    about six)."""
    s, b, _ = hidden.shape
    logits = F.linear(hidden, weight).float()  # [s, b, V]
    loss = F.cross_entropy(logits.view(s * b, -1), labels.t().reshape(-1), reduction="none")  # [s*b]
    return loss.view(s, b).t().contiguous()


class GrowGPTModel(GPTModel):
    """megatron's GPTModel with the option of a fused linear + cross-entropy loss.

    With `fused_loss` (kernels on, TP = 1) the last stage never materialises the [tokens,
    vocab] logits when labels are given; with `compiled_loss` (model.compile, TP = 1) the
    output layer and the loss run as one compiled function (linear_cross_entropy); otherwise
    megatron's output layer and vocab-parallel cross entropy run unchanged.
    """

    fused_loss: bool = False
    compiled_loss = None
    """torch.compile(linear_cross_entropy), set by the builder; per model, not per module, so
    that no compiled state outlives the model (dynamo's cache gives a grown model the graphs)."""

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        own_loss = (
            self.post_process
            and labels is not None
            and self.config.mtp_num_layers is None
            and kwargs.get("inference_context") is None
        )
        if own_loss and self.fused_loss:
            s, b, h = hidden_states.shape
            w = self.shared_embedding_or_output_weight()  # [V, h]
            flat = hidden_states.transpose(0, 1).reshape(b * s, h)  # [b*s, h], batch-major like labels
            return _kernels().fused_linear_cross_entropy(flat, w, labels.reshape(-1)).view(b, s)
        if own_loss and self.compiled_loss is not None:
            return self.compiled_loss(hidden_states, self.shared_embedding_or_output_weight(), labels)
        return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)


class GrowTransformerLayer(TransformerLayer):
    """megatron's TransformerLayer plus a position that can change when the model grows.

    Its initial weights depend on the seed and its global position only. `layer_number`
    (global, 1-based) is fixed at construction: a growth builds a new model at the new depth,
    whose layers are constructed at their new positions (the moved weights go in afterwards),
    so a layer's position never changes. `set_layer_number`, called once from the constructor,
    copies it into the attention modules and derives the LN-Scaling factor of the norms from it.
    """

    def __init__(self, config: TransformerConfig, submodules, layer_number: int = 1, vp_stage=None, **kwargs):
        # Initial weights depend on the layer's global position and the seed only, not on which
        # pipeline stage builds it or in what order: a PP run starts from the single-rank weights.
        pg = kwargs.get("pg_collection")
        pp_rank = pg.pp.rank() if pg is not None and hasattr(pg, "pp") else None
        position = layer_number + get_transformer_layer_offset(config, vp_stage, pp_rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((getattr(config, "grow_init_seed", 0) * 1_000_003 + position) % 2**63)
            super().__init__(config, submodules, layer_number=layer_number, vp_stage=vp_stage, **kwargs)
        self.set_layer_number(self.layer_number)

    def set_layer_number(self, layer_number: int) -> None:
        self.layer_number = layer_number
        self.self_attention.layer_number = layer_number
        self.self_attention.core_attention.layer_number = layer_number
        scale = 1.0 / math.sqrt(layer_number) if getattr(self.config, "grow_ln_scaling", False) else 1.0
        for norm in (self.input_layernorm, self.pre_mlp_layernorm):
            norm.scale = scale
