"""A looped block on the megatron model (docs/method.md §10): layers [s, e) applied r times, weights tied.

The model keeps its L layers (parameters, checkpoints, growth and the optimizer see the plain
model, so tied weights have one parameter set and one optimizer state, and their gradient is
the sum over all applications by autograd). Looping adds two things, both undone by
`LoopHandle.remove()`:

- a forward hook on the block's last layer that re-applies the block r-1 times to its output
  (calling the same layer modules, so the same parameters);
- the LN-Scaling factors of the unrolled positions (config/loop.py): each repeated application
  runs with 1/sqrt(u) of its unrolled position u, and the layers above the block with their
  shifted position. megatron's `layer_number` stays the stored position (checkpoints key on it).

Under pipeline parallelism the block must lie on one stage (RunConfig checks it); the stages
above it only see their LN-Scaling shift.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field

import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.config.loop import LoopConfig, LoopSpec


def _ln_scale(layer, position: int) -> float:
    """LN-Scaling factor of 0-indexed position `position` for this layer's config (1.0 when off)."""
    return 1.0 / math.sqrt(position + 1) if getattr(layer.config, "grow_ln_scaling", False) else 1.0


def _norms(layer) -> tuple:
    return layer.input_layernorm, layer.pre_mlp_layernorm


@contextlib.contextmanager
def _scaled(layer, scale: float):
    """Run `layer` with LN-Scaling factor `scale` (a python float read in forward, so autograd
    keeps the value of each application)."""
    old = [n.scale for n in _norms(layer)]
    for n in _norms(layer):
        n.scale = scale
    try:
        yield
    finally:
        for n, s in zip(_norms(layer), old):
            n.scale = s


class _RepeatBlock:
    """Forward hook of the block's last layer: (hidden, context) -> after r-1 more passes."""

    def __init__(self, block: list, spec: LoopSpec):
        self.block = block
        # [repeat][i] -> LN-Scaling factor of that application
        self.scales = [
            [_ln_scale(layer, u) for layer, u in zip(block, positions)] for positions in spec.extra_positions()
        ]

    def __call__(self, module, args, kwargs, output):
        hidden, context = output  # hidden: [s, b, h]
        for scales in self.scales:
            for layer, scale in zip(self.block, scales):
                with _scaled(layer, scale):
                    # .forward, not __call__: the hook must not fire again on the inner passes.
                    hidden, context = layer.forward(*args, **{**kwargs, "hidden_states": hidden, "context": context})
        return hidden, context


@dataclass
class LoopHandle:
    """An applied loop; `remove()` restores the plain model."""

    spec: LoopSpec
    hooks: list = field(default_factory=list)
    saved_scales: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for norm, scale in self.saved_scales:
            norm.scale = scale
        self.hooks.clear()
        self.saved_scales.clear()


def apply_loop(layers_by_position: dict[int, torch.nn.Module], spec: LoopSpec, depth: int) -> LoopHandle:
    """Loop the layers this rank holds (global position -> GrowTransformerLayer) of a model of
    `depth` layers. The block must be wholly on this rank or wholly elsewhere."""
    spec.check("loop", depth)
    handle = LoopHandle(spec)
    if spec.repeats == 1:
        return handle
    block = [layers_by_position.get(p) for p in range(spec.start, spec.end)]
    if any(x is None for x in block) and any(x is not None for x in block):
        raise ConfigError("loop", str(spec), "the looped block must lie within one pipeline stage")
    for pos, layer in layers_by_position.items():
        if pos >= spec.end:
            for norm in _norms(layer):
                handle.saved_scales.append((norm, norm.scale))
                norm.scale = _ln_scale(layer, spec.shift(pos))
    if block[0] is not None:
        handle.hooks.append(block[-1].register_forward_hook(_RepeatBlock(block, spec), with_kwargs=True))
    return handle


def apply_loop_to_engine(engine, spec: LoopSpec) -> LoopHandle:
    return apply_loop(engine.layers_by_position(), spec, engine.depth)


class LoopSchedule:
    """Loop-adapted training: keeps `model.loop` applied to whatever engine is current from
    `from_step` on (engines are rebuilt at growths and resumes)."""

    def __init__(self, loop: LoopConfig | None):
        self.loop = loop
        self._engine: weakref.ref | None = None  # weak: a growth must be able to free the old engine
        self._handle: LoopHandle | None = None

    def update(self, engine, step: int) -> bool:
        """Apply the loop to `engine` if `step` trains looped; True when it was applied just now."""
        if self.loop is None or not self.loop.active_at(step):
            return False
        if self._engine is not None and self._engine() is engine:
            return False
        self._handle = apply_loop_to_engine(engine, self.loop.spec)
        self._engine = weakref.ref(engine)
        return True
