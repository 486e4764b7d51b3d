"""A residual-stream runner over a Hugging Face Llama-shaped decoder.

Every depth analysis is a thin function over this runner: it runs the decoder one layer at a
time (calling the model's own modules: input_layernorm, self_attn, post_attention_layernorm,
mlp, norm, lm_head) so that an analysis can

  (a) observe h_i (residual entering layer i), a_i (attention output) and m_i (MLP output),
  (b) skip a layer / attention / MLP at chosen token positions (contribution replaced by 0),
  (c) run the layers in another order (swap windows, reverse, skip k layers),
  (d) start from a stored residual state, so interventions at layer s do not recompute 0..s-1,
  (e) run packed rows (several sequences sharing a prefix, see data.MCBatch).

Batches are right-padded: with a causal mask, padding after a sequence cannot influence its
real tokens, so no padding mask is needed and lengths are tracked by the analyses themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Part = Literal["layer", "attn", "mlp"]
PARTS: tuple[Part, ...] = ("layer", "attn", "mlp")

# observer(step, layer, h, a, m): h (B,T,d) the residual entering the step, a and m (B,T,d)
# the contributions actually added (after any skip). Returning nothing; it may keep reductions.
Observer = Callable[[int, int, Tensor, Tensor, Tensor], None]


@dataclass(frozen=True)
class Skip:
    """Replace a (sub)layer's contribution to the residual stream by zero."""

    step: int
    """Position in the execution order (equals the layer index when the order is unchanged)."""
    part: Part = "layer"
    """'layer' (attention and MLP), 'attn' or 'mlp'."""
    positions: Tensor | None = None
    """(B,T) bool, True where the contribution is zeroed; None zeroes it at every position."""


@dataclass
class Context:
    """Per-batch tensors every layer call needs: rotary embeddings and the causal mask."""

    position_embeddings: tuple[Tensor, Tensor]
    mask: object


class ResidualRunner:
    """Layer-by-layer execution of a `LlamaForCausalLM` (or any model with the same module
    names: model.embed_tokens, model.layers[i].{input_layernorm,self_attn,
    post_attention_layernorm,mlp}, model.norm, model.rotary_emb, lm_head)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.core = model.model
        self.layers = self.core.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return self.core.embed_tokens.weight.device

    # ----------------------------------------------------------------- building blocks
    def context(self, h0: Tensor, position_ids: Tensor | None = None, segments: Tensor | None = None) -> Context:
        """Rotary embeddings and attention mask for residual states shaped like h0 (B,T,d).

        Default: positions 0..T-1 and a causal mask. position_ids (B,T) and segments (B,T)
        describe packed rows (data.MCBatch): a query attends causally to keys of segment 0
        (the shared prompt) and of its own segment."""
        # transformers (seconds): not at import, so that `grow-megatron analyze --help` answers at once.
        from transformers.masking_utils import create_causal_mask

        T = h0.shape[1]
        if position_ids is None:
            position_ids = torch.arange(T, device=h0.device).unsqueeze(0)  # (1,T)
        pe = self.core.rotary_emb(h0, position_ids=position_ids.to(h0.device))
        and_mask = None
        if segments is not None:
            seg = segments.to(h0.device)  # (B,T)

            def and_mask(b: Tensor, head: Tensor, q: Tensor, kv: Tensor) -> Tensor:
                return (seg[b, kv] == 0) | (seg[b, kv] == seg[b, q])

        # The cache argument is passed positionally: transformers renamed it (past_key_values -> cache).
        # Mask positions are always 0..T-1 (causal order in the row); rotary positions are separate.
        mask = create_causal_mask(self.core.config, h0, None, None, and_mask_function=and_mask)
        return Context(pe, mask)

    def embed(self, input_ids: Tensor) -> Tensor:
        """h_0 (B,T,d) for input_ids (B,T)."""
        return self.core.embed_tokens(input_ids.to(self.device))

    def attn(self, layer: int, h: Tensor, ctx: Context) -> Tensor:
        """a = self_attn(input_layernorm(h)), (B,T,d)."""
        blk = self.layers[layer]
        out, _ = blk.self_attn(
            hidden_states=blk.input_layernorm(h), position_embeddings=ctx.position_embeddings, attention_mask=ctx.mask
        )
        return out

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        """m = mlp(post_attention_layernorm(x)) where x = h + a, (B,T,d)."""
        blk = self.layers[layer]
        return blk.mlp(blk.post_attention_layernorm(x))

    def contributions(self, layer: int, h: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        """(a, m) of `layer` on residual input h; the layer's output is h + a + m."""
        a = self.attn(layer, h, ctx)
        return a, self.mlp(layer, h + a)

    def unembed(self, h: Tensor) -> Tensor:
        """Logits (…,V) of a residual state that is fed to the final norm."""
        return self.model.lm_head(self.core.norm(h))

    # ----------------------------------------------------------------- full runs
    def run(
        self,
        input_ids: Tensor | None = None,
        *,
        order: Sequence[int] | None = None,
        skips: Sequence[Skip] = (),
        observer: Observer | None = None,
        h: Tensor | None = None,
        start: int = 0,
        ctx: Context | None = None,
        return_hidden: bool = False,
        position_ids: Tensor | None = None,
        segments: Tensor | None = None,
    ) -> Tensor:
        """Logits (B,T,V) (or the final residual (B,T,d) with return_hidden).

        order: layer indices to execute (default 0..L-1); layers may repeat or be left out.
        start/h: begin at step `start` of the order with residual h (B,T,d) instead of
        embedding input_ids (used to resume from a stored state).
        position_ids/segments: packed rows (see context), when ctx is not given.
        """
        order = list(range(self.num_layers)) if order is None else list(order)
        if h is None:
            if start:
                raise ValueError("start > 0 needs the residual state h at that step")
            h = self.embed(input_ids)
        ctx = ctx or self.context(h, position_ids, segments)
        by_step: dict[int, list[Skip]] = {}
        for s in skips:
            by_step.setdefault(s.step, []).append(s)
        for step in range(start, len(order)):
            layer = order[step]
            a = self.attn(layer, h, ctx)
            a = _apply(a, by_step.get(step, ()), ("layer", "attn"))
            m = self.mlp(layer, h + a)
            m = _apply(m, by_step.get(step, ()), ("layer", "mlp"))
            if observer is not None:
                observer(step, layer, h, a, m)
            h = h + a + m
        return h if return_hidden else self.unembed(h)

    def hidden_states(
        self,
        input_ids: Tensor,
        order: Sequence[int] | None = None,
        position_ids: Tensor | None = None,
        segments: Tensor | None = None,
    ) -> tuple[Tensor, Context]:
        """All residual states (L+1,B,T,d): h_0 (embeddings) .. h_L (final-norm input).

        This is the one stored copy of the activations analyses keep; contributions are
        c_i = h_{i+1} - h_i and sublayer outputs are recomputed from h_i when needed."""
        h = self.embed(input_ids)
        ctx = self.context(h, position_ids, segments)
        order = list(range(self.num_layers)) if order is None else list(order)
        out = h.new_empty((len(order) + 1, *h.shape))
        out[0] = h
        for step, layer in enumerate(order):
            a, m = self.contributions(layer, h, ctx)
            h = h + a + m
            out[step + 1] = h
        return out, ctx


def _apply(x: Tensor, skips: Sequence[Skip], parts: tuple[str, ...]) -> Tensor:
    for s in skips:
        if s.part not in parts:
            continue
        if s.positions is None:
            x = torch.zeros_like(x)
        else:
            keep = (~s.positions.to(x.device)).unsqueeze(-1).to(x.dtype)  # (B,T,1)
            x = x * keep
    return x


# --------------------------------------------------------------------- layer orders
def swap_order(L: int, start: int, k: int) -> list[int]:
    """Swap the adjacent windows [start, start+k) and [start+k, start+2k)."""
    if start < 0 or start + 2 * k > L:
        raise ValueError(f"cannot swap windows of {k} at {start} in {L} layers")
    o = list(range(L))
    return o[:start] + o[start + k : start + 2 * k] + o[start : start + k] + o[start + 2 * k :]


def skip_order(L: int, start: int, k: int) -> list[int]:
    """Leave out layers [start, start+k)."""
    if start < 0 or start + k > L:
        raise ValueError(f"cannot skip {k} layers at {start} in {L} layers")
    return [i for i in range(L) if not start <= i < start + k]


def reverse_order(L: int, start: int, k: int, base: Sequence[int] | None = None) -> list[int]:
    """Reverse steps [start, start+k) of `base` (default 0..L-1)."""
    o = list(range(L)) if base is None else list(base)
    if start < 0 or start + k > len(o):
        raise ValueError(f"cannot reverse {k} layers at {start} in {len(o)} layers")
    return o[:start] + o[start : start + k][::-1] + o[start + k :]


def first_changed(order: Sequence[int], L: int) -> int:
    """Number of leading steps of `order` identical to the identity order (reusable prefix)."""
    n = 0
    while n < len(order) and n < L and order[n] == n:
        n += 1
    return n
