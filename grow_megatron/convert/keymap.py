"""The explicit map between grow_megatron (megatron-core GPTModel) and Hugging Face Llama tensors.

Everything here is a pure function of tensors and shapes: no files, no process groups.

Native tensors are the *global*, layout-free tensors of a checkpoint: TP shards concatenated,
PP stages stacked, so one key per parameter kind with a leading layer axis of size depth for
the decoder layers (megatron's sharded state dict). Keys below are written without the
checkpoint's `model.` prefix; the native names are engine/checkpoint/keys.py's (the one owner of the
checkpoint key format), the HF names this module's.

    native                                             HF (layer i, 0-indexed)
    embedding.word_embeddings.weight   [V, d]          model.embed_tokens.weight   (= lm_head, tied)
    decoder.final_layernorm.weight     [d]             model.norm.weight
    decoder.layers.input_layernorm.weight[i]           model.layers.i.input_layernorm.weight           * 1/sqrt(i+1) *
    decoder.layers.pre_mlp_layernorm.weight[i]         model.layers.i.post_attention_layernorm.weight  * 1/sqrt(i+1) *
    decoder.layers.self_attention.linear_qkv.weight[i] model.layers.i.self_attn.{q,k,v}_proj.weight    (de-interleave)
    decoder.layers.self_attention.linear_proj.weight[i] model.layers.i.self_attn.o_proj.weight
    decoder.layers.mlp.linear_fc1.weight[i]            model.layers.i.mlp.{gate,up}_proj.weight        (split rows)
    decoder.layers.mlp.linear_fc2.weight[i]            model.layers.i.mlp.down_proj.weight

    * only with LN-Scaling (docs/method.md §5): the factor of the layer's 1-indexed position is folded
      into the norm gain, so the export is a plain Llama.

No q/k permutation is needed: megatron's RoPE (rotary_interleaved=False) rotates halves of
each head (x1, x2 = x[:d/2], x[d/2:]) exactly like transformers' `rotate_half`, so the rows of
a head are in the same order on both sides. (Meta's original Llama weights rotate interleaved
pairs, which is what the permute in HF's convert_llama_weights_to_hf.py is for.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import ModelConfig
from grow_megatron.engine.checkpoint.keys import EMBED, FC1, FC2, FINAL_NORM, INPUT_NORM, MLP_NORM, PROJ, QKV, layer_key

HF_PREFIX = "model."
"""transformers' LlamaForCausalLM prefix of the decoder's tensors (its own format, not ours)."""
HF_EMBED = HF_PREFIX + "embed_tokens.weight"
HF_NORM = HF_PREFIX + "norm.weight"
HF_HEAD = "lm_head.weight"


def hf_layer_keys(i: int) -> dict[str, str]:
    """HF names of layer i's tensors, by role."""
    p = f"{HF_PREFIX}layers.{i}."
    return {
        "input_norm": p + "input_layernorm.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def hf_keys(num_layers: int) -> list[str]:
    """Every tensor an exported (tied) Llama holds, in file order."""
    keys = [HF_EMBED]
    for i in range(num_layers):
        keys += list(hf_layer_keys(i).values())
    return keys + [HF_NORM]


def _q_rows(model: ModelConfig) -> int:
    """Rows of the query projection: heads * head_dim."""
    return model.num_attention_heads * model.head_dim


def fold_norm(weight: torch.Tensor, position: int) -> torch.Tensor:
    """Norm gain with the LN-Scaling factor folded in: w' = w / sqrt(l), l = position + 1.

    Computed in fp64 and rounded once, so the folded gain is the correctly rounded value."""
    return (weight.double() / math.sqrt(position + 1)).to(weight.dtype)


def unfold_norm(weight: torch.Tensor, position: int) -> torch.Tensor:
    """Inverse of fold_norm up to one rounding (exact inversion is impossible in floating point:
    the fold is not injective on fp32)."""
    return (weight.double() * math.sqrt(position + 1)).to(weight.dtype)


# --- QKV ---------------------------------------------------------------------------------
# megatron's fused QKV rows are grouped by query group g (= kv head g):
#   [ q heads g*r .. g*r+r-1 (r = heads / kv_heads) | k head g | v head g ]   each head_dim rows
# (see megatron/core/transformer/attention.py, SelfAttention.get_query_key_value_tensors).
# HF keeps q, k, v as separate matrices with heads in order; query head h uses kv head h // r
# on both sides (HF's repeat_kv; our SDPAttention's repeat_interleave, or SDPA's enable_gqa, which
# groups the same way).


def split_qkv(qkv: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron fused QKV [(hq + 2 hkv) * hd, d] -> q [hq*hd, d], k [hkv*hd, d], v [hkv*hd, d]."""
    g, hd = model.kv_heads, model.head_dim
    r = model.num_attention_heads // g
    d_in = qkv.shape[-1]
    expected = (model.num_attention_heads + 2 * g) * hd
    if qkv.shape[0] != expected:
        raise ValueError(f"linear_qkv has {qkv.shape[0]} rows, expected (heads + 2 kv_heads) * head_dim = {expected}")
    grouped = qkv.reshape(g, r + 2, hd, d_in)  # [g, r+2, hd, d]
    q = grouped[:, :r].reshape(g * r * hd, d_in)  # [hq*hd, d]; group-major = head order
    k = grouped[:, r].reshape(g * hd, d_in)  # [hkv*hd, d]
    v = grouped[:, r + 1].reshape(g * hd, d_in)  # [hkv*hd, d]
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """Inverse of split_qkv: q [hq*hd, d], k, v [hkv*hd, d] -> megatron fused [(hq + 2 hkv) * hd, d]."""
    g, hd = model.kv_heads, model.head_dim
    r = model.num_attention_heads // g
    d_in = q.shape[-1]
    qg = q.reshape(g, r, hd, d_in)  # [g, r, hd, d]
    kg = k.reshape(g, 1, hd, d_in)  # [g, 1, hd, d]
    vg = v.reshape(g, 1, hd, d_in)  # [g, 1, hd, d]
    return torch.cat([qg, kg, vg], dim=1).reshape((g * (r + 2)) * hd, d_in).contiguous()


# --- SwiGLU fc1 --------------------------------------------------------------------------
# megatron's gated fc1 is cat([gate, up]) along rows and computes silu(first half) * second
# half (megatron/core/transformer/mlp.py glu); HF: down(silu(gate(x)) * up(x)).


def split_fc1(fc1: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """[2f, d] -> gate [f, d], up [f, d]."""
    f = model.ffn_hidden_size
    if fc1.shape[0] != 2 * f:
        raise ValueError(f"linear_fc1 has {fc1.shape[0]} rows, expected 2 * ffn_hidden_size = {2 * f}")
    return fc1[:f].contiguous(), fc1[f:].contiguous()


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up], dim=0).contiguous()  # [2f, d]


# --- one tensor at a time (what streaming conversions call) ----------------------------------


def native_tensor_to_hf(suffix: str, i: int, t: torch.Tensor, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Layer i's native tensor `suffix` (no layer axis) -> the HF tensor(s) it becomes."""
    keys = hf_layer_keys(i)
    if suffix == INPUT_NORM:
        return {keys["input_norm"]: (fold_norm(t, i) if model.ln_scaling else t).contiguous()}
    if suffix == MLP_NORM:
        return {keys["mlp_norm"]: (fold_norm(t, i) if model.ln_scaling else t).contiguous()}
    if suffix == QKV:
        q, k, v = split_qkv(t, model)
        return {keys["q"]: q, keys["k"]: k, keys["v"]: v}
    if suffix == PROJ:
        return {keys["o"]: t.contiguous()}
    if suffix == FC1:
        gate, up = split_fc1(t, model)
        return {keys["gate"]: gate, keys["up"]: up}
    if suffix == FC2:
        return {keys["down"]: t.contiguous()}
    raise KeyError(f"no HF counterpart for layer tensor {suffix!r}")


def hf_tensor_to_native(suffix: str, i: int, hf: dict[str, torch.Tensor], model: ModelConfig) -> torch.Tensor:
    """The native tensor `suffix` of layer i (no layer axis) from layer i's HF tensors."""
    keys = hf_layer_keys(i)
    if suffix == INPUT_NORM:
        t = hf[keys["input_norm"]]
        return (unfold_norm(t, i) if model.ln_scaling else t).contiguous()
    if suffix == MLP_NORM:
        t = hf[keys["mlp_norm"]]
        return (unfold_norm(t, i) if model.ln_scaling else t).contiguous()
    if suffix == QKV:
        return merge_qkv(hf[keys["q"]], hf[keys["k"]], hf[keys["v"]], model)
    if suffix == PROJ:
        return hf[keys["o"]].contiguous()
    if suffix == FC1:
        return merge_fc1(hf[keys["gate"]], hf[keys["up"]])
    if suffix == FC2:
        return hf[keys["down"]].contiguous()
    raise KeyError(f"no native layer tensor {suffix!r}")


def hf_sources(suffix: str, i: int) -> list[str]:
    """The HF tensors of layer i that native `suffix` is made of."""
    keys = hf_layer_keys(i)
    return [
        keys[r]
        for r in {
            INPUT_NORM: ("input_norm",),
            MLP_NORM: ("mlp_norm",),
            QKV: ("q", "k", "v"),
            PROJ: ("o",),
            FC1: ("gate", "up"),
            FC2: ("down",),
        }[suffix]
    ]


def expected_hf_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f, V = model.hidden_size, model.ffn_hidden_size, model.vocab_size
    q, kv = _q_rows(model), model.kv_size
    out: dict[str, tuple[int, ...]] = {HF_EMBED: (V, d), HF_NORM: (d,)}
    for i in range(model.num_layers):
        k = hf_layer_keys(i)
        out.update(
            {
                k["input_norm"]: (d,),
                k["mlp_norm"]: (d,),
                k["q"]: (q, d),
                k["k"]: (kv, d),
                k["v"]: (kv, d),
                k["o"]: (d, q),
                k["gate"]: (f, d),
                k["up"]: (f, d),
                k["down"]: (d, f),
            }
        )
    return out


def expected_native_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Global native tensor shapes (stacked layer axis first), without the `model.` prefix."""
    d, f, V, L = model.hidden_size, model.ffn_hidden_size, model.vocab_size, model.num_layers
    q, kv = _q_rows(model), model.kv_size
    return {
        EMBED: (V, d),
        FINAL_NORM: (d,),
        layer_key(INPUT_NORM): (L, d),
        layer_key(MLP_NORM): (L, d),
        layer_key(QKV): (L, q + 2 * kv, d),
        layer_key(PROJ): (L, d, q),
        layer_key(FC1): (L, 2 * f, d),
        layer_key(FC2): (L, d, f),
    }


def check_shapes(
    tensors: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]],
    where: str,
    allow_extra: Iterable[str] = (),
) -> None:
    """Raise one readable error for missing, unexpected or mis-shaped tensors."""
    allow = tuple(allow_extra)
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected and not any(k.endswith(a) for a in allow)]
    bad = [
        f"{k} {tuple(tensors[k])} != {expected[k]}"
        for k in expected
        if k in tensors and tuple(tensors[k]) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
    if bad:
        problems.append(f"shape {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    if problems:
        raise ConfigError(where, "tensors", "; ".join(problems))
