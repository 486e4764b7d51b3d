"""Loading the models the analyses run on.

An analysis needs an HF-shaped `LlamaForCausalLM` and (for text data and multiple-choice
tasks) a tokenizer. Each loader is one function `(path, device, dtype name) -> Loaded | None`
returning None when the path is not its format; `LOADERS` is tried in order. Native
grow_megatron checkpoints go through `grow_megatron.convert.load_as_hf` (the hook the
evaluator uses too) as soon as the converter provides it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Loaded:
    """A model ready for analysis."""

    model: torch.nn.Module
    """An eval-mode LlamaForCausalLM (or same module layout)."""
    tokenizer: Any | None
    """A Hugging Face tokenizer, or None when the checkpoint has none."""
    name: str
    """Label used in JSON results and figure legends."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_hf(path: str, device: str, dtype: str) -> Loaded | None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # a bare weights directory is fine for token-id data
        tok = None
    return Loaded(model, tok, os.path.basename(os.path.normpath(path)))


def _load_native(path: str, device: str, dtype: str) -> Loaded | None:
    # A native checkpoint or run dir, converted in memory (the same hook `grow-megatron eval` uses).
    if not os.path.isdir(path):
        return None
    from grow_megatron.convert import load_as_hf

    model, tok = load_as_hf(path, device=device, dtype=dtype)
    return Loaded(model.eval(), tok, os.path.basename(os.path.normpath(path)))


LOADERS: tuple[Callable[[str, str, str], Loaded | None], ...] = (_load_hf, _load_native)


def load_model(path: str, device: str = "cpu", dtype: str = "float32", name: str | None = None) -> Loaded:
    """Load `path` with the first loader that recognises it; dtype is a DTYPES name."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    for loader in LOADERS:
        got = loader(path, device, dtype)
        if got is not None:
            if name:
                got.name = name
            return got
    raise FileNotFoundError(f"no model found at {path}")


def as_loaded(model: torch.nn.Module | Loaded, tokenizer: Any | None = None, name: str = "model") -> Loaded:
    """Wrap an in-memory model so library functions accept either form."""
    if isinstance(model, Loaded):
        return model
    return Loaded(model.eval(), tokenizer, name)
