"""Block weight similarity (docs/method.md §7): concatenate all MLP weights of each block of b layers into
one vector and take the cosine similarity between every pair of blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grow_megatron.config.base import check


@dataclass
class SimilarityConfig:
    """Options of the block weight similarity."""

    block_size: int = 4
    """Layers per block, b."""
    offset: int = 0
    """First layer of the first block (layers before it, and a partial last block, are left out);
    e.g. to align blocks with a LIDAS copy that does not start at a multiple of b."""

    def validate(self, path: str = "block-similarity") -> None:
        check(self.block_size >= 1, f"{path}.block_size", self.block_size, "must be >= 1")
        check(self.offset >= 0, f"{path}.offset", self.offset, "must be >= 0")


@torch.no_grad()
def block_similarity(model: torch.nn.Module, cfg: SimilarityConfig) -> dict:
    layers = model.model.layers
    L, b = len(layers), cfg.block_size
    cfg.validate()
    starts = list(range(cfg.offset, L - b + 1, b))
    if not starts:
        raise ValueError(f"no complete block of {b} layers from layer {cfg.offset} in {L} layers")
    vecs = []
    for s in starts:
        # Parameters in a fixed name order, so equal blocks give equal vectors.
        parts = [
            p.detach().float().flatten() for i in range(s, s + b) for _, p in sorted(layers[i].mlp.named_parameters())
        ]
        vecs.append(torch.cat(parts))
    V = torch.stack(vecs)  # (n_blocks, P)
    V = V / V.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = V @ V.T  # (n,n)
    return {
        "block_size": b,
        "offset": cfg.offset,
        "blocks": [[s, s + b - 1] for s in starts],
        "similarity": sim.tolist(),
        "num_layers": L,
    }
