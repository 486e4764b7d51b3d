"""Inference-time looping of a Hugging Face Llama (docs/method.md §10), with `generate` and its KV cache.

`loop_hf_model(model, spec)` replaces `model.model.layers` by the unrolled list: positions
below the block's end keep their modules; every later position u (the repeated applications
and the shifted layers above the block) is a thin `type(layer)(config, layer_idx=u)` built on
the meta device whose submodules *are* the shared layer's (same parameters), so it owns
cache slot u while sharing weights, and the residual-stream runner of the analyses sees the
unrolled depth through the usual attribute names. `config.num_hidden_layers` becomes the
unrolled depth (the cache and the decoder loop read it). `unloop_hf_model` restores the model.

LN-Scaling (config/loop.py): each application uses the factor of its unrolled position. An
export of an LN-Scaling model has the factor 1/sqrt(l) folded into its norm gains (recorded in
its grow_megatron history), so an application of layer l at unrolled position u multiplies
the norm outputs by sqrt(l)/sqrt(u); a model without LN-Scaling needs nothing.
"""

from __future__ import annotations

import math

import torch

from grow_megatron.config.loop import LoopSpec
from grow_megatron.convert.hf import HISTORY_FIELD

LOOP_ATTR = "grow_megatron_loop"
"""config attribute holding the applied loop ({start, end, repeats, depth}), for restoring it."""


class RescaledNorm(torch.nn.Module):
    """A shared norm whose output is multiplied by a constant (LN-Scaling of another position)."""

    def __init__(self, norm: torch.nn.Module, factor: float):
        super().__init__()
        self.norm = norm
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [b, t, d]
        return self.norm(x) * self.factor


def ln_scaling_folded(config) -> bool:
    """Whether this HF model's norm gains carry a folded LN-Scaling factor (our export history)."""
    history = getattr(config, HISTORY_FIELD, None) or {}
    return bool(history.get("ln_scaling_folded_into_norms", False))


def _application(layer: torch.nn.Module, config, position: int, factor: float) -> torch.nn.Module:
    """A decoder layer at unrolled `position` that runs `layer`'s submodules (same parameters)."""
    with torch.device("meta"):
        app = type(layer)(config, layer_idx=position)
    for name, child in layer.named_children():
        if name == "self_attn":
            # The attention module carries layer_idx (the cache slot): a fresh one whose
            # projections are the shared ones.
            for sub, mod in child.named_children():
                setattr(app.self_attn, sub, mod)
        elif factor != 1.0 and name in ("input_layernorm", "post_attention_layernorm"):
            setattr(app, name, RescaledNorm(child, factor))
        else:
            setattr(app, name, child)
    left = [n for n, t in [*app.named_parameters(), *app.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"looped layer {position}: {left[:3]} not shared from the original layer")
    return app


class HFLoop:
    """A loop applied to an HF model; `remove()` puts the plain layers and depth back."""

    def __init__(self, model, spec: LoopSpec, layers: torch.nn.ModuleList, depth: int):
        self.model, self.spec, self._layers, self._depth = model, spec, layers, depth

    def remove(self) -> None:
        if self._layers is not None:
            self.model.model.layers = self._layers
            self.model.config.num_hidden_layers = self._depth
            setattr(self.model.config, LOOP_ATTR, None)
            self._layers = None

    def __enter__(self) -> HFLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def loop_hf_model(model, spec: LoopSpec, ln_folded: bool | None = None) -> HFLoop:
    """Loop `model` (a LlamaForCausalLM, or the same module layout) in place."""
    core = model.model
    depth = len(core.layers)
    if getattr(model.config, LOOP_ATTR, None):
        raise ValueError(f"model is already looped ({getattr(model.config, LOOP_ATTR)}); remove that loop first")
    spec.check("--loop", depth)
    original = core.layers
    if spec.repeats == 1:
        return HFLoop(model, spec, None, depth)
    folded = ln_scaling_folded(model.config) if ln_folded is None else ln_folded
    unrolled = []
    for u, j in enumerate(spec.source_map(depth)):
        if u < spec.end:
            unrolled.append(original[j])
            continue
        factor = math.sqrt(j + 1) / math.sqrt(u + 1) if folded else 1.0
        unrolled.append(_application(original[j], model.config, u, factor))
    core.layers = torch.nn.ModuleList(unrolled)
    model.config.num_hidden_layers = len(unrolled)
    setattr(model.config, LOOP_ATTR, {**spec.to_dict(), "depth": depth})
    return HFLoop(model, spec, original, depth)


def apply_loop_arg(model, text: str | None) -> HFLoop | None:
    """`--loop TEXT` applied to a loaded HF model (one-line ConfigError if it does not fit)."""
    if text is None:
        return None
    return loop_hf_model(model, LoopSpec.parse(text, depth=len(model.model.layers)))
