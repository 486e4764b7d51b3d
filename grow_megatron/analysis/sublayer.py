"""Sublayer statistics (docs/method.md §7): relative contribution and cosine to the residual stream.

For layer i with residual input h_i, attention output a_i and MLP output m_i:
  attention: ||a_i|| / ||h_i||          and cos(a_i, h_i)
  MLP:       ||m_i|| / ||h_i + a_i||    and cos(m_i, h_i + a_i)   (the stream the MLP reads)
  layer:     ||a_i + m_i|| / ||h_i||    and cos(a_i + m_i, h_i)
each computed per token and averaged over all real tokens. Nothing is stored beyond running
sums: the observer reduces each layer's activations as they are produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from grow_megatron.analysis.data import TokenBatch
from grow_megatron.analysis.runner import ResidualRunner
from grow_megatron.config.base import check

_EPS = 1e-12


@dataclass
class SublayerConfig:
    """Options of the sublayer statistics."""

    batch_size: int = 8
    """Sequences per forward pass."""
    seq_len: int = 128
    """Tokens per sequence read from the data file."""
    max_sequences: int = 64
    """Number of sequences used."""
    block_size: int = 4
    """Block size b; figures mark the first layer of every block."""

    def validate(self, path: str = "sublayer") -> None:
        for name in ("batch_size", "seq_len", "max_sequences", "block_size"):
            check(getattr(self, name) >= 1, f"{path}.{name}", getattr(self, name), "must be >= 1")


def _ratio_cos(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Per token ||x|| / ||ref|| and cos(x, ref): (B,T,d),(B,T,d) -> (B,T),(B,T)."""
    x, ref = x.float(), ref.float()
    nx, nr = x.norm(dim=-1), ref.norm(dim=-1)
    return nx / nr.clamp_min(_EPS), (x * ref).sum(-1) / (nx * nr).clamp_min(_EPS)


@torch.no_grad()
def sublayer_analysis(
    runner: ResidualRunner, batches: Sequence[TokenBatch], cfg: SublayerConfig, progress: bool = True
) -> dict:
    L = runner.num_layers
    names = ("attn", "mlp", "layer")
    sums = {f"{n}_{s}": torch.zeros(L, dtype=torch.float64) for n in names for s in ("rel", "cos")}
    count = 0
    for tb in tqdm(batches, desc="sublayer stats", disable=not progress):
        valid = tb.valid().to(runner.device)

        def observe(step: int, layer: int, h: Tensor, a: Tensor, m: Tensor) -> None:
            for name, x, ref in (("attn", a, h), ("mlp", m, h + a), ("layer", a + m, h)):
                r, c = _ratio_cos(x, ref)
                sums[f"{name}_rel"][step] += r[valid].double().sum().cpu()
                sums[f"{name}_cos"][step] += c[valid].double().sum().cpu()

        runner.run(tb.ids, observer=observe, return_hidden=True)
        count += int(valid.sum())
    out = {k: (v / max(count, 1)).tolist() for k, v in sums.items()}
    out.update({"num_layers": L, "tokens": count, "block_size": cfg.block_size})
    return out
