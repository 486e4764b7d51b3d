"""The one model loader of `eval`, `analyze` and `convert`, and the one check of what a Hugging
Face directory holds.

Every command that loads a model checks first, before any weights are read, that the
directory's config.json describes a model the command can run, and stops with one line saying
what it accepts. Without that check `LlamaForCausalLM.from_pretrained` on, say, a GPT-2
directory silently fills in Llama defaults (4096 wide, 32 layers) and loads no weights.

What is accepted:
  "llama"      Llama-layout decoders (`analyze`, `convert`, and `eval` of native checkpoints):
               model_type llama, or mistral when its sliding window never binds (none, or at
               least the context), which is then the same network as a Llama; both load as
               `LlamaForCausalLM`.
  "causal-lm"  `eval`: any model type transformers has a causal-LM class for; Llama-layout
               ones load as above, others through `AutoModelForCausalLM`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.convert.hf import UnsupportedModelError

Accept = Literal["llama", "causal-lm"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
"""Any of these makes a directory's tokenizer loadable by transformers' AutoTokenizer."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Loaded:
    """A model ready for evaluation or analysis."""

    model: torch.nn.Module
    """An eval-mode causal LM (a LlamaForCausalLM for everything `accept="llama"` admits)."""
    tokenizer: Any | None
    """A Hugging Face tokenizer, or None when the model has none (and none was required)."""
    name: str
    """Label used in JSON results and figure legends."""


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


def _binding_window(cfg: dict, seq_length: Optional[int] = None) -> Optional[tuple[int, int]]:
    """(sliding_window, context) of a Mistral config whose window is shorter than its context."""
    window = cfg.get("sliding_window")
    ctx = max(int(cfg.get("max_position_embeddings") or 0), int(seq_length or 0))
    return (int(window), ctx) if window is not None and int(window) < ctx else None


def is_llama_layout(cfg: dict, seq_length: Optional[int] = None) -> bool:
    """Whether an HF config is a Llama network (loadable as LlamaForCausalLM)."""
    mt = cfg.get("model_type")
    return mt == "llama" or (mt == "mistral" and _binding_window(cfg, seq_length) is None)


def check_model_type(cfg: dict, accept: Accept = "llama", where: str = "config.json",
                     seq_length: Optional[int] = None) -> None:
    """Raise one UnsupportedModelError (a ConfigError) unless the HF config `cfg` is a model
    `accept` admits (module docstring). seq_length: the context the model will run at (for
    mistral's window)."""
    if is_llama_layout(cfg, seq_length):
        return
    model_type = cfg.get("model_type")
    if accept == "causal-lm":
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return  # e.g. a windowed Mistral: transformers' own class runs it
    if model_type == "mistral":
        window, ctx = _binding_window(cfg, seq_length)
        raise UnsupportedModelError(f"{where} sliding_window", window,
                                    f"is shorter than the context ({ctx}): the model is not a Llama; only Mistral "
                                    "models whose window never binds (sliding_window null or >= the context) are "
                                    "accepted")
    raise UnsupportedModelError(f"{where} model_type", model_type, f"this command needs {_accepts(accept)}")


def check_model_dir(path: str, accept: Accept = "llama", field: str = "MODEL") -> Optional[dict]:
    """Check a model path before anything is loaded: an HF directory's config.json (returned)
    against `accept`; a native checkpoint or run directory (None returned) is a Llama."""
    if not os.path.exists(path):
        raise ConfigError(field, path, "no such directory (give a Hugging Face model directory, a run directory "
                                       "or a checkpoint directory)")
    if not os.path.isdir(path):
        raise ConfigError(field, path, "is a file: give a Hugging Face model directory, a run directory or a "
                                       "checkpoint directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        from grow_megatron.convert.native import resolve_checkpoint

        resolve_checkpoint(path)  # one line when it is no checkpoint either
        return None
    cfg = read_config(path, field)
    check_model_type(cfg, accept, where=os.path.join(path, "config.json"))
    return cfg


def llama_config(cfg: dict):
    """A transformers LlamaConfig of a Llama-layout config dict (a Mistral one included)."""
    from transformers import LlamaConfig

    d = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "sliding_window",
                                                   "transformers_version")}
    d["architectures"] = ["LlamaForCausalLM"]
    return LlamaConfig(**d)


def load_tokenizer(path: str, required: bool):
    """The directory's HF tokenizer; None (or, when required, one line naming what is missing)."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        if required:
            raise ConfigError("MODEL", path, f"has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the "
                                             "model's tokenizer files into it (`convert to-hf` writes them)")
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError, KeyError) as e:
        if required:
            raise ConfigError("MODEL", path, f"its tokenizer files do not load ({str(e).splitlines()[0][:200]})") from None
        return None


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError("--dtype", dtype, f"choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(path: str, device: str = "cpu", dtype="float32", *, accept: Accept = "llama",
               need_tokenizer: bool = False, config: Optional[str] = None, name: Optional[str] = None) -> Loaded:
    """An eval-mode model (+ tokenizer) from an HF directory, a native checkpoint or a run
    directory (converted in memory, LN-Scaling folded). Checks the path first (check_model_dir).

    config: a native checkpoint's run config.yaml (default: RUN_DIR/config.yaml)."""
    dt = _dtype(dtype)
    hf_cfg = check_model_dir(path, accept)
    label = name or os.path.basename(os.path.normpath(path))
    if hf_cfg is None:
        from grow_megatron.convert.api import NativeSource, _hf_tokenizer, native_to_hf_model

        src = NativeSource(path, config)
        try:
            ours = src.tokenizer()
        except ConfigError:
            if need_tokenizer:
                raise
            ours = None
        model = native_to_hf_model(src, dt, ours)
        return Loaded(model.to(device).eval(), _hf_tokenizer(ours) if ours is not None else None, label)
    tok = load_tokenizer(path, need_tokenizer)
    if is_llama_layout(hf_cfg):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(path, config=llama_config(hf_cfg), dtype=dt)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    return Loaded(model.to(device).eval(), tok, label)


def load_as_hf(path: str, device: str = "cpu", dtype=torch.float32, *, config: Optional[str] = None):
    """(LlamaForCausalLM in eval mode, HF tokenizer or None) for an HF dir, a native checkpoint dir
    or a run dir. `dtype` may be a torch dtype or a name."""
    got = load_model(path, device, dtype, accept="llama", config=config)
    return got.model, got.tokenizer


def as_loaded(model: torch.nn.Module | Loaded, tokenizer: Any | None = None, name: str = "model") -> Loaded:
    """Wrap an in-memory model so library functions accept either form."""
    if isinstance(model, Loaded):
        return model
    return Loaded(model.eval(), tokenizer, name)
