"""The checkpoint key format: the one module that spells it (tests/test_owners.py holds every
other module of the package to that).

A checkpoint holds, by key, whole global tensors (engine/checkpoint/):

    model.<name>                         a weight, <name> its module path in megatron's GPTModel
    optimizer.<state>.model.<name>       its fp32 main copy (state "param") and AdamW moments
                                         ("exp_avg", "exp_avg_sq"), sharded like the weight

A decoder layer's parameters are stored stacked: `model.decoder.layers.<suffix>` with a
leading layer axis of size depth (megatron's sharded keys), while the modules name them
`decoder.layers.<i>.<suffix>`.
"""

from __future__ import annotations

MODEL = "model."
"""Prefix of every weight's key (megatron's sharded state dict, built with this prefix)."""
OPTIMIZER = "optimizer."
STATE_KEYS = ("param", "exp_avg", "exp_avg_sq")
"""Optimizer state kept per parameter: fp32 main copy, AdamW's first and second moments."""
MOMENTS = ("exp_avg", "exp_avg_sq")

# Model-space names (without MODEL).
EMBED = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"
"""Untied output layer: at PP=1 absent (tied to EMBED), on the last stage of a PP run a copy."""
LAYERS = "decoder.layers."

# Layer suffixes (after LAYERS, or after `LAYERS<i>.` in module names).
INPUT_NORM = "input_layernorm.weight"
MLP_NORM = "pre_mlp_layernorm.weight"
QKV = "self_attention.linear_qkv.weight"
PROJ = "self_attention.linear_proj.weight"
FC1 = "mlp.linear_fc1.weight"
FC2 = "mlp.linear_fc2.weight"
LAYER_SUFFIXES = (INPUT_NORM, QKV, PROJ, MLP_NORM, FC1, FC2)
OUTPUT_PROJECTIONS = (PROJ, FC2)
"""A layer's output projections: zero in a copy => the copy adds nothing to the residual stream
(function-preserving growth zeroes the weight and its main copy, not the moments)."""


def state_key(state: str, key: str) -> str:
    """The key of optimizer state `state` (one of STATE_KEYS) of checkpoint key `key`
    (e.g. state_key("param", model_key(EMBED)))."""
    if state not in STATE_KEYS:
        raise ValueError(f"optimizer state {state!r}: must be one of {', '.join(STATE_KEYS)}")
    return f"{OPTIMIZER}{state}.{key}"


def model_key(name: str) -> str:
    """The checkpoint key of the weight with model-space name `name`."""
    return MODEL + name


def parse_state_key(key: str) -> tuple[str | None, str] | None:
    """(optimizer state or None for the weight itself, model-space name) of a checkpoint key;
    None for a key that is neither a weight nor a weight's optimizer state."""
    if key.startswith(MODEL):
        return None, key[len(MODEL) :]
    for state in STATE_KEYS:
        prefix = state_key(state, MODEL)
        if key.startswith(prefix):
            return state, key[len(prefix) :]
    return None


def layer_key(suffix: str) -> str:
    """Model-space name of the stacked (layer-axis) tensor of layer parameter `suffix`."""
    return LAYERS + suffix


def layer_suffix(name: str) -> str | None:
    """The layer suffix of a stacked model-space name (None for a non-layer name)."""
    return name[len(LAYERS) :] if name.startswith(LAYERS) else None


def stacked_name(param_name: str) -> tuple[str, int | None]:
    """(model-space name in a checkpoint, layer index or None) of a module parameter name:
    `decoder.layers.<i>.<suffix>` is layer i of the stacked `decoder.layers.<suffix>`."""
    if not param_name.startswith(LAYERS):
        return param_name, None
    i, suffix = param_name[len(LAYERS) :].split(".", 1)
    return layer_key(suffix), int(i)
