"""The one model loader of `eval`, `analyze` and `convert`.

Every command that loads a model checks first, before any weights are read, that the
directory's config.json describes a model the command can run (convert/hf.py's
check_model_type, whose `accept` says what is accepted), and stops with one line saying what
it accepts. Without that check `LlamaForCausalLM.from_pretrained` on, say, a GPT-2 directory
silently fills in Llama defaults (4096 wide, 32 layers) and loads no weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from grow_megatron.config.base import ConfigError, DataError
from grow_megatron.convert.api import DTYPES, NativeSource, hf_tokenizer, native_to_hf_model
from grow_megatron.convert.hf import Accept, check_model_type, is_llama_layout, llama_config, read_config
from grow_megatron.convert.native import resolve_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
"""Any of these makes a directory's tokenizer loadable by transformers' AutoTokenizer."""


@dataclass
class Loaded:
    """A model ready for evaluation or analysis."""

    model: torch.nn.Module
    """An eval-mode causal LM (a LlamaForCausalLM for everything `accept="llama"` admits)."""
    tokenizer: Any | None
    """A Hugging Face tokenizer, or None when the model has none (and none was required)."""
    name: str
    """Label used in JSON results and figure legends."""


def check_model_dir(path: str, accept: Accept = "llama", field: str = "MODEL") -> dict | None:
    """Check a model path before anything is loaded: an HF directory's config.json (returned)
    against `accept`; a native checkpoint or run directory (None returned) is a Llama."""
    if not os.path.exists(path):
        raise ConfigError(
            field,
            path,
            "no such directory (give a Hugging Face model directory, a run directory or a checkpoint directory)",
        )
    if not os.path.isdir(path):
        raise ConfigError(
            field, path, "is a file: give a Hugging Face model directory, a run directory or a checkpoint directory"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        resolve_checkpoint(path)  # one line when it is no checkpoint either
        return None
    cfg = read_config(path, field)
    check_model_type(cfg, accept, where=os.path.join(path, "config.json"))
    return cfg


def load_tokenizer(path: str, required: bool):
    """The directory's HF tokenizer; None (or, when required, one line naming what is missing)."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        if required:
            raise ConfigError(
                "MODEL",
                path,
                f"has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the "
                "model's tokenizer files into it (`convert to-hf` writes them)",
            )
        return None
    # transformers is imported where it is used: it takes seconds (the model classes tens of
    # seconds), and a native checkpoint's path through here never needs these.
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError, KeyError) as e:
        if required:
            raise ConfigError(
                "MODEL", path, f"its tokenizer files do not load ({str(e).splitlines()[0][:200]})"
            ) from None
        return None


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError("--dtype", dtype, f"choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    path: str,
    device: str = "cpu",
    dtype="float32",
    *,
    accept: Accept = "llama",
    need_tokenizer: bool = False,
    config: str | None = None,
    name: str | None = None,
) -> Loaded:
    """An eval-mode model (+ tokenizer) from an HF directory, a native checkpoint or a run
    directory (converted in memory, LN-Scaling folded). Checks the path first (check_model_dir).

    config: a native checkpoint's run config.yaml (default: RUN_DIR/config.yaml)."""
    dt = _dtype(dtype)
    hf_cfg = check_model_dir(path, accept)
    label = name or os.path.basename(os.path.normpath(path))
    if hf_cfg is None:
        src = NativeSource(path, config)
        try:
            ours = src.tokenizer()
        except (ConfigError, DataError):
            if need_tokenizer:
                raise
            ours = None
        model = native_to_hf_model(src, dt, ours)
        return Loaded(model.to(device).eval(), hf_tokenizer(ours) if ours is not None else None, label)
    tok = load_tokenizer(path, need_tokenizer)
    if is_llama_layout(hf_cfg):
        from transformers import LlamaForCausalLM  # seconds to import (see load_tokenizer)

        model = LlamaForCausalLM.from_pretrained(path, config=llama_config(hf_cfg), dtype=dt)
    else:
        from transformers import AutoModelForCausalLM  # seconds to import (see load_tokenizer)

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    return Loaded(model.to(device).eval(), tok, label)


def load_as_hf(path: str, device: str = "cpu", dtype=torch.float32, *, config: str | None = None):
    """(LlamaForCausalLM in eval mode, HF tokenizer or None) for an HF dir, a native checkpoint dir
    or a run dir. `dtype` may be a torch dtype or a name."""
    got = load_model(path, device, dtype, accept="llama", config=config)
    return got.model, got.tokenizer


def as_loaded(model: torch.nn.Module | Loaded, tokenizer: Any | None = None, name: str = "model") -> Loaded:
    """Wrap an in-memory model so library functions accept either form."""
    if isinstance(model, Loaded):
        return model
    return Loaded(model.eval(), tokenizer, name)
