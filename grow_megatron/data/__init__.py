"""Data: tokenizers, raw text -> megatron indexed datasets, weighted mixtures, batch order.

Public API (imported lazily, so `import grow_megatron.data` stays cheap):
`DataConfig`, `DatasetSpec`, `build_tokenizer`, `build_datasets`, `get_microbatches`,
`sample_indices`, `load_tokenizer`, `train_bpe_tokenizer`, `prepare`, `Tokenizer`.
See docs/data.md.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataConfig": "grow_megatron.config.data",
    "DatasetSpec": "grow_megatron.config.data",
    "PAPER_MIXTURE": "grow_megatron.config.data",
    "build_tokenizer": "grow_megatron.data.datasets",
    "build_datasets": "grow_megatron.data.datasets",
    "get_microbatches": "grow_megatron.data.datasets",
    "sample_indices": "grow_megatron.data.datasets",
    "resolve_datasets": "grow_megatron.data.datasets",
    "load_tokenizer": "grow_megatron.data.tokenizer",
    "train_bpe_tokenizer": "grow_megatron.data.tokenizer",
    "Tokenizer": "grow_megatron.data.tokenizer",
    "prepare": "grow_megatron.data.prepare",
    "read_manifest": "grow_megatron.data.prepare",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'grow_megatron.data' has no attribute {name!r}")
