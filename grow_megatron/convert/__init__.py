"""Checkpoint conversion between grow_megatron and Hugging Face Llama (docs/convert.md).

    to_hf(ckpt, out_dir)          native checkpoint (or run dir) -> LlamaForCausalLM directory
    from_hf(hf_dir, out_dir)      HF Llama directory -> run dir with a step-0 native checkpoint
    load_model(path, ...)         the one loader of eval/analyze (checks the model type first, load.py)
    load_as_hf(path, device, dtype) -> (LlamaForCausalLM, tokenizer) for HF dirs and native checkpoints
    compare_logits(ckpt, hf_dir)  max |native - HF| logits, the parity check

The tensor map itself (HF key names, QKV de-interleave, fc1 split, LN-Scaling fold) is in keymap.py;
the native checkpoint's key names are engine/checkpoint/keys.py's.
"""

from grow_megatron.convert.api import (
    from_hf,
    hf_to_native_state_dict,
    native_to_hf_model,
    native_to_hf_state_dict,
    to_hf,
)
from grow_megatron.convert.hf import UnsupportedModelError, check_model_type, shape_from_hf_config
from grow_megatron.convert.keymap import merge_qkv, split_qkv
from grow_megatron.convert.load import Loaded, check_model_dir, load_as_hf, load_model
from grow_megatron.convert.parity import compare_logits

__all__ = [
    "to_hf",
    "from_hf",
    "load_as_hf",
    "load_model",
    "Loaded",
    "check_model_dir",
    "check_model_type",
    "compare_logits",
    "native_to_hf_model",
    "native_to_hf_state_dict",
    "hf_to_native_state_dict",
    "UnsupportedModelError",
    "shape_from_hf_config",
    "split_qkv",
    "merge_qkv",
]
