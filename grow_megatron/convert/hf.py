"""The Hugging Face side: LlamaConfig <-> LlamaShape, what we refuse to convert, weight files."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.convert.keymap import (HF_EMBED, HF_HEAD, LlamaShape, check_shapes, expected_hf_shapes)

HISTORY_FILE = "grow_megatron.json"
HISTORY_FIELD = "grow_megatron_history"
# Tensors some Llama checkpoints carry that hold no weights (recomputed from the config).
IGNORABLE = ("rotary_emb.inv_freq",)


class UnsupportedModelError(ConfigError):
    """An HF model grow_megatron cannot represent; names the field and what to do instead."""


def _unsupported(field: str, value: Any, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"config.json {field}", value, why)


def rope_theta_of(cfg: dict) -> float:
    """RoPE base of an HF config (transformers >= 5 `rope_parameters`, or the older flat fields);
    refuses every RoPE variant but the default one."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    for field, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type", "default"))
            if kind not in (None, "default"):
                raise _unsupported(f"{field}.rope_type", kind, "only plain RoPE is supported (no scaling: linear, "
                                   "dynamic, yarn, llama3, ...); use a model without rope scaling")
        elif value is not None:
            raise _unsupported(field, value, "must be a mapping or null")
    theta = (params or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = float(theta)
    if theta <= 0 or theta != math.floor(theta):
        # megatron's GPTModel takes `rotary_base` as an int: a fractional base would change the model.
        raise _unsupported("rope_theta", theta, "must be a positive integer (megatron's rotary_base is an int)")
    return theta


def shape_from_hf_config(cfg: dict, *, ln_scaling: bool = False, seq_length: Optional[int] = None) -> LlamaShape:
    """LlamaShape of an HF config.json dict, or one UnsupportedModelError naming the field."""
    from grow_megatron.convert.load import check_model_type

    check_model_type(cfg, "llama", seq_length=seq_length)
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _unsupported("hidden_act", act, "grow_megatron's MLP is SwiGLU: hidden_act must be silu")
    for field in ("attention_bias", "mlp_bias"):
        if cfg.get(field, False):
            raise _unsupported(field, cfg[field], "grow_megatron models have no biases; convert a bias-free model")
    theta = rope_theta_of(cfg)
    d = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    if d % heads:
        raise _unsupported("num_attention_heads", heads, f"must divide hidden_size ({d})")
    head_dim = int(cfg.get("head_dim") or d // heads)
    if head_dim != d // heads:
        raise _unsupported("head_dim", head_dim, f"must equal hidden_size / num_attention_heads = {d // heads} "
                           "(grow_megatron derives head_dim from them)")
    if heads % kv:
        raise _unsupported("num_key_value_heads", kv, f"must divide num_attention_heads ({heads})")
    if head_dim % 2:
        raise _unsupported("head_dim", head_dim, "must be even (RoPE rotates halves)")
    return LlamaShape(num_layers=int(cfg["num_hidden_layers"]), hidden_size=d,
                      ffn_hidden_size=int(cfg["intermediate_size"]), num_heads=heads, num_kv_heads=kv,
                      head_dim=head_dim, vocab_size=int(cfg["vocab_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                      rope_theta=theta, seq_length=int(seq_length or cfg.get("max_position_embeddings") or 2048),
                      ln_scaling=ln_scaling)


def make_hf_config(shape: LlamaShape, *, bos_token_id: Optional[int], eos_token_id: Optional[int], dtype: torch.dtype,
                   history: Optional[dict] = None):
    """A plain Llama config (LN-Scaling is folded into the weights, never a config switch)."""
    from transformers import LlamaConfig

    extra = {HISTORY_FIELD: history} if history is not None else {}
    cfg = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.ffn_hidden_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, head_dim=shape.head_dim, hidden_act="silu",
        max_position_embeddings=shape.seq_length, rms_norm_eps=shape.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(shape.rope_theta)},
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=None,
        architectures=["LlamaForCausalLM"], dtype=str(dtype).replace("torch.", ""), **extra)
    return cfg


def write_hf_config(cfg, out_dir: str) -> None:
    """config.json, also carrying the pre-transformers-5 `rope_theta` field so older readers agree."""
    d = cfg.to_dict()
    d["rope_theta"] = float(cfg.rope_parameters["rope_theta"])
    d["rope_scaling"] = None
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(hf_dir):
        raise ConfigError("hf_dir", hf_dir, "no such directory (give a Hugging Face model directory)")
    if not os.path.isfile(path):
        raise ConfigError("hf_dir", hf_dir, "has no config.json (give a Hugging Face model directory)")
    with open(path) as f:
        return json.load(f)


def _weight_files(hf_dir: str) -> list[str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = os.path.join(hf_dir, index)
        if os.path.isfile(p):
            with open(p) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(hf_dir, x) for x in files]
    for single in ("model.safetensors", "pytorch_model.bin"):
        p = os.path.join(hf_dir, single)
        if os.path.isfile(p):
            return [p]
    raise ConfigError("hf_dir", hf_dir, "has no model.safetensors (or pytorch_model.bin, or a sharded index of them)")


def load_hf_weights(hf_dir: str) -> dict[str, torch.Tensor]:
    """All tensors of an HF model directory, by name, with the `model.` prefix of LlamaForCausalLM."""
    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(hf_dir):
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            out.update(load_file(path))
        else:
            out.update(torch.load(path, map_location="cpu", weights_only=True))
    if not any(k.startswith("model.") for k in out):  # saved from a bare LlamaModel
        out = {(k if k == HF_HEAD else f"model.{k}"): v for k, v in out.items()}
    return out


def check_hf_weights(weights: dict[str, torch.Tensor], shape: LlamaShape, cfg: dict, hf_dir: str) -> None:
    """Every tensor present with the right shape; biases and untied heads refused by name."""
    biases = [k for k in weights if k.endswith(".bias")]
    if biases:
        raise UnsupportedModelError(f"weights {biases[0]}", "present",
                                    "grow_megatron models have no biases; convert a bias-free model")
    if HF_HEAD in weights:
        head, emb = weights[HF_HEAD], weights.get(HF_EMBED)
        if not cfg.get("tie_word_embeddings", False) and not (emb is not None and torch.equal(head, emb)):
            raise _unsupported("tie_word_embeddings", cfg.get("tie_word_embeddings", False),
                               "grow_megatron ties the output head to the input embedding; this model has a "
                               "separate lm_head.weight, which would be lost")
    elif not cfg.get("tie_word_embeddings", False):
        raise _unsupported("tie_word_embeddings", False, "no lm_head.weight either: set tie_word_embeddings true "
                           "if the head is the embedding")
    shapes = {k: tuple(v.shape) for k, v in weights.items() if k != HF_HEAD}
    check_shapes(shapes, expected_hf_shapes(shape), f"weights of {hf_dir}", allow_extra=IGNORABLE)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
