"""The Hugging Face side: config.json <-> ModelConfig, which models a command accepts and what
we refuse to convert, weight files.

What is accepted (`accept`):
  "llama"      Llama-layout decoders (`analyze`, `convert`, and `eval` of native checkpoints):
               model_type llama, or mistral when its sliding window never binds (none, or at
               least the context), which is then the same network as a Llama; both load as
               `LlamaForCausalLM`.
  "causal-lm"  `eval`: any model type transformers has a causal-LM class for; Llama-layout
               ones load as above, others through `AutoModelForCausalLM`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import ModelConfig
from grow_megatron.convert.keymap import HF_EMBED, HF_HEAD, HF_PREFIX, check_shapes, expected_hf_shapes

Accept = Literal["llama", "causal-lm"]

HISTORY_FILE = "grow_megatron.json"
HISTORY_FIELD = "grow_megatron_history"
# Tensors some Llama checkpoints carry that hold no weights (recomputed from the config).
IGNORABLE = ("rotary_emb.inv_freq",)


class UnsupportedModelError(ConfigError):
    """An HF model grow_megatron cannot represent; names the field and what to do instead."""


def _unsupported(field: str, value: Any, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"config.json {field}", value, why)


def _accepts(accept: Accept) -> str:
    if accept == "llama":
        return "a Llama-layout model (model_type llama, or mistral without a sliding window)"
    return "a causal LM transformers knows (model_type llama, mistral, gpt2, qwen2, ...)"


def read_config(path: str, field: str = "MODEL") -> dict:
    """config.json of an HF directory as a dict (one-line errors for a missing or broken file)."""
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ConfigError(field, path, "has no config.json (give a Hugging Face model directory)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(field, cfg_path, f"is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(field, cfg_path, "is not a JSON object")
    return cfg


def _binding_window(cfg: dict, seq_length: int | None = None) -> tuple[int, int] | None:
    """(sliding_window, context) of a Mistral config whose window is shorter than its context."""
    window = cfg.get("sliding_window")
    ctx = max(int(cfg.get("max_position_embeddings") or 0), int(seq_length or 0))
    return (int(window), ctx) if window is not None and int(window) < ctx else None


def is_llama_layout(cfg: dict, seq_length: int | None = None) -> bool:
    """Whether an HF config is a Llama network (loadable as LlamaForCausalLM)."""
    mt = cfg.get("model_type")
    return mt == "llama" or (mt == "mistral" and _binding_window(cfg, seq_length) is None)


def check_model_type(
    cfg: dict, accept: Accept = "llama", where: str = "config.json", seq_length: int | None = None
) -> None:
    """Raise one UnsupportedModelError (a ConfigError) unless the HF config `cfg` is a model
    `accept` admits (module docstring). seq_length: the context the model will run at (for
    mistral's window)."""
    if is_llama_layout(cfg, seq_length):
        return
    model_type = cfg.get("model_type")
    if accept == "causal-lm":
        # transformers is imported where it is used: it takes seconds, and the commands that
        # only read native checkpoints through convert/ (grow, to-hf's checks) never need it.
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return  # e.g. a windowed Mistral: transformers' own class runs it
    if model_type == "mistral":
        window, ctx = _binding_window(cfg, seq_length)
        raise UnsupportedModelError(
            f"{where} sliding_window",
            window,
            f"is shorter than the context ({ctx}): the model is not a Llama; only Mistral "
            "models whose window never binds (sliding_window null or >= the context) are "
            "accepted",
        )
    raise UnsupportedModelError(f"{where} model_type", model_type, f"this command needs {_accepts(accept)}")


def rope_theta_of(cfg: dict) -> float:
    """RoPE base of an HF config (transformers >= 5 `rope_parameters`, or the older flat fields);
    refuses every RoPE variant but the default one."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    for field, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type", "default"))
            if kind not in (None, "default"):
                raise _unsupported(
                    f"{field}.rope_type",
                    kind,
                    "only plain RoPE is supported (no scaling: linear, "
                    "dynamic, yarn, llama3, ...); use a model without rope scaling",
                )
        elif value is not None:
            raise _unsupported(field, value, "must be a mapping or null")
    theta = (params or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    theta = float(theta)
    if theta <= 0 or theta != math.floor(theta):
        # megatron's GPTModel takes `rotary_base` as an int: a fractional base would change the model.
        raise _unsupported("rope_theta", theta, "must be a positive integer (megatron's rotary_base is an int)")
    return theta


def shape_from_hf_config(cfg, *, ln_scaling: bool = False, seq_length: int | None = None) -> ModelConfig:
    """The ModelConfig of an HF config (a config.json dict or a transformers config object; the
    one reader of them), or one UnsupportedModelError naming the field. Fused kernels off: the
    model is converted on whatever machine reads it; a run turns them on in its config."""
    if not isinstance(cfg, Mapping):
        cfg = cfg.to_dict()
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
        raise _unsupported(
            "head_dim",
            head_dim,
            f"must equal hidden_size / num_attention_heads = {d // heads} (grow_megatron derives head_dim from them)",
        )
    if heads % kv:
        raise _unsupported("num_key_value_heads", kv, f"must divide num_attention_heads ({heads})")
    if head_dim % 2:
        raise _unsupported("head_dim", head_dim, "must be even (RoPE rotates halves)")
    return ModelConfig(
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=d,
        ffn_hidden_size=int(cfg["intermediate_size"]),
        num_attention_heads=heads,
        num_query_groups=kv,
        vocab_size=int(cfg["vocab_size"]),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        seq_length=int(seq_length or cfg.get("max_position_embeddings") or 2048),
        ln_scaling=ln_scaling,
        kernels="off",
    )


def make_hf_config(
    model: ModelConfig,
    *,
    bos_token_id: int | None,
    eos_token_id: int | None,
    dtype: torch.dtype,
    history: dict | None = None,
):
    """A plain Llama config (LN-Scaling is folded into the weights, never a config switch)."""
    from transformers import LlamaConfig  # seconds to import (see check_model_type)

    extra = {HISTORY_FIELD: history} if history is not None else {}
    cfg = LlamaConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=model.kv_heads,
        head_dim=model.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.seq_length,
        rms_norm_eps=model.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(model.rope_theta)},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
        architectures=["LlamaForCausalLM"],
        dtype=str(dtype).replace("torch.", ""),
        **extra,
    )
    return cfg


def write_hf_config(cfg, out_dir: str) -> None:
    """config.json, also carrying the pre-transformers-5 `rope_theta` field so older readers agree."""
    d = cfg.to_dict()
    d["rope_theta"] = float(cfg.rope_parameters["rope_theta"])
    d["rope_scaling"] = None
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def read_hf_config(hf_dir: str) -> dict:
    if not os.path.exists(hf_dir):
        raise ConfigError("hf_dir", hf_dir, "no such directory (give a Hugging Face model directory)")
    return read_config(hf_dir, "hf_dir")


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
            out.update(load_file(path))
        else:
            out.update(torch.load(path, map_location="cpu", weights_only=True))
    if not any(k.startswith(HF_PREFIX) for k in out):  # saved from a bare LlamaModel
        out = {(k if k == HF_HEAD else HF_PREFIX + k): v for k, v in out.items()}
    return out


def check_hf_weights(weights: dict[str, torch.Tensor], model: ModelConfig, cfg: dict, hf_dir: str) -> None:
    """Every tensor present with the right shape; biases and untied heads refused by name."""
    biases = [k for k in weights if k.endswith(".bias")]
    if biases:
        raise UnsupportedModelError(
            f"weights {biases[0]}", "present", "grow_megatron models have no biases; convert a bias-free model"
        )
    if HF_HEAD in weights:
        head, emb = weights[HF_HEAD], weights.get(HF_EMBED)
        if not cfg.get("tie_word_embeddings", False) and not (emb is not None and torch.equal(head, emb)):
            raise _unsupported(
                "tie_word_embeddings",
                cfg.get("tie_word_embeddings", False),
                "grow_megatron ties the output head to the input embedding; this model has a "
                "separate lm_head.weight, which would be lost",
            )
    elif not cfg.get("tie_word_embeddings", False):
        raise _unsupported(
            "tie_word_embeddings",
            False,
            "no lm_head.weight either: set tie_word_embeddings true if the head is the embedding",
        )
    shapes = {k: tuple(v.shape) for k, v in weights.items() if k != HF_HEAD}
    check_shapes(shapes, expected_hf_shapes(model), f"weights of {hf_dir}", allow_extra=IGNORABLE)


def llama_config(cfg: dict):
    """A transformers LlamaConfig of a Llama-layout config dict (a Mistral one included)."""
    from transformers import LlamaConfig  # seconds to import (see check_model_type)

    d = {
        k: v
        for k, v in cfg.items()
        if k not in ("model_type", "architectures", "sliding_window", "transformers_version")
    }
    d["architectures"] = ["LlamaForCausalLM"]
    return LlamaConfig(**d)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
