"""Skip-effect heatmaps and the depth score (docs/method.md §7; Csordás et al. 2025, paper App. B).

Skipping a (sub)layer replaces its contribution by zero. Two position regimes:
  current: skip at every token, measure at every token;
  future:  for a boundary t, skip at tokens <= t, measure at tokens > t only.
Two effect kinds on later layers l > s, both the relative change ||c'_l - c_l|| / ||c_l|| of
layer l's contribution c_l = a_l + m_l:
  propagated: the change is forwarded through all later layers;
  local:      s's stored contribution is subtracted from l's input only.
The output effect is the L2 norm of the change of the softmaxed output distribution.
Heatmaps aggregate by max over examples, positions and boundaries; the depth score uses, per
layer, the mean over examples of the max over future positions and boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from grow_megatron.analysis.data import TokenBatch
from grow_megatron.analysis.runner import PARTS, Context, ResidualRunner, Skip
from grow_megatron.config.base import check

_EPS = 1e-8


@dataclass
class BoundaryConfig:
    """Where the 'future' regime splits each sequence."""

    boundaries: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Boundaries t as fractions of each sequence's length (t = floor(f * (len - 1)))."""
    boundary_positions: list[int] = field(default_factory=list)
    """Absolute token indices t; when given they replace `boundaries`."""

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        check(
            bool(self.boundaries or self.boundary_positions),
            f"{p}boundaries",
            self.boundaries,
            "needs at least one boundary",
        )
        check(
            all(0 <= f <= 1 for f in self.boundaries), f"{p}boundaries", self.boundaries, "fractions must lie in [0, 1]"
        )
        check(
            all(t >= 0 for t in self.boundary_positions),
            f"{p}boundary_positions",
            self.boundary_positions,
            "must be >= 0",
        )
        for name in ("batch_size", "seq_len", "max_sequences"):
            if hasattr(self, name):
                check(getattr(self, name) >= 1, f"{p}{name}", getattr(self, name), "must be >= 1")


@dataclass
class DepthScoreConfig(BoundaryConfig):
    """Options of the depth score."""

    batch_size: int = 8
    """Sequences per forward pass."""
    seq_len: int = 128
    """Tokens per sequence read from the data file."""
    max_sequences: int = 64
    """Number of sequences (examples) used."""


@dataclass
class EffectsConfig(DepthScoreConfig):
    """Options of the skip-effect heatmaps."""

    parts: list[str] = field(default_factory=lambda: list(PARTS))
    """Which (sub)layers are skipped: any of layer, attn, mlp."""
    modes: list[str] = field(default_factory=lambda: ["current", "future"])
    """Position regimes: current and/or future."""
    local: bool = True
    """Also compute local (direct, non-propagated) effects: O(L^2) layer calls per setting."""
    max_sequences: int = 16
    """Number of sequences (examples) used; heatmaps are maxima, a few suffice."""

    def validate(self, path: str = "effects") -> None:
        super().validate(path)
        check(
            bool(self.parts) and all(p in PARTS for p in self.parts),
            f"{path}.parts",
            self.parts,
            f"choose from {', '.join(PARTS)}",
        )
        check(
            bool(self.modes) and all(m in ("current", "future") for m in self.modes),
            f"{path}.modes",
            self.modes,
            "choose from current, future",
        )


def depth_score(effects: Sequence[float]) -> float:
    """Expected layer index (from 0) under p = effects / sum(effects)."""
    e = torch.as_tensor(list(effects), dtype=torch.float64)
    total = e.sum()
    if not total > 0:
        return math.nan
    return float((torch.arange(len(e), dtype=torch.float64) * e / total).sum())


def bootstrap_se(dout: Tensor, resamples: int = 1000, seed: int = 0) -> float:
    """Standard error of the depth score over examples: the std of the score of examples
    resampled with replacement (dout (L,N): per-layer effect of each example)."""
    N = dout.shape[1]
    if N < 2:
        return math.nan
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, N, (resamples, N), generator=g)  # (R,N)
    means = dout.double()[:, idx].mean(-1)  # (L,R)
    p = means / means.sum(0).clamp_min(1e-30)
    scores = (torch.arange(dout.shape[0], dtype=torch.float64)[:, None] * p).sum(0)  # (R,)
    return float(scores.std())


def settings(tb: TokenBatch, mode: str, cfg: BoundaryConfig) -> list[tuple[Tensor, Tensor]]:
    """(skip positions, measured positions), both (B,T) bool, for each boundary of `mode`."""
    valid = tb.valid()
    if mode == "current":
        return [(valid, valid)]
    if mode != "future":
        raise ValueError(f"mode {mode!r}: choose current or future")
    pos = torch.arange(tb.ids.shape[1])[None, :]  # (1,T)
    last = (tb.lengths - 2).clamp_min(0)  # a boundary needs at least one later token
    if cfg.boundary_positions:
        ts = [torch.full_like(tb.lengths, t).clamp(max=last) for t in cfg.boundary_positions]
    else:
        ts = [torch.minimum((f * (tb.lengths - 1).float()).floor().long(), last) for f in cfg.boundaries]
    return [((pos <= t[:, None]) & valid, (pos > t[:, None]) & valid) for t in ts]


def _mmax(x: Tensor, mask: Tensor) -> Tensor:
    """Max over positions of a non-negative (B,T) quantity where mask; 0 where none."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).amax(-1)


def _rel_change(new: Tensor, old: Tensor) -> Tensor:
    """Per token ||new - old|| / ||old||: (B,T,d) -> (B,T)."""
    return (new - old).float().norm(dim=-1) / old.float().norm(dim=-1).clamp_min(_EPS)


def _source(runner: ResidualRunner, hs: Tensor, ctx: Context, part: str, s: int) -> Tensor:
    """The stored contribution of (sub)layer s, (B,T,d)."""
    c = hs[s + 1] - hs[s]
    if part == "layer":
        return c
    a = runner.attn(s, hs[s], ctx)
    return a if part == "attn" else c - a


@torch.no_grad()
def _batch_effects(
    runner: ResidualRunner, tb: TokenBatch, part: str, mode: str, cfg: BoundaryConfig, later: bool, local: bool
) -> dict[str, Tensor]:
    """Per-example maxima over positions and boundaries for one batch.

    Returns 'output' (L,B) and, if asked, 'propagated' and 'local' (L_src,L_tgt,B) with zeros
    where target <= source."""
    L = runner.num_layers
    dev = runner.device
    hs, ctx = runner.hidden_states(tb.ids.to(dev))  # the one stored copy: (L+1,B,T,d)
    probs = torch.softmax(runner.unembed(hs[-1]).float(), dim=-1)  # (B,T,V)
    B = tb.ids.shape[0]
    out = {"output": torch.zeros(L, B)}
    if later:
        out["propagated"] = torch.zeros(L, L, B)
    if local:
        out["local"] = torch.zeros(L, L, B)
    for skip_pos, meas in settings(tb, mode, cfg):
        skip_pos, meas = skip_pos.to(dev), meas.to(dev)
        for s in range(L):
            row = torch.zeros(L, B)

            def observe(step: int, layer: int, h: Tensor, a: Tensor, m: Tensor) -> None:
                if step > s:
                    row[step] = _mmax(_rel_change(a + m, hs[step + 1] - hs[step]), meas).cpu()

            hL = runner.run(
                h=hs[s],
                start=s,
                ctx=ctx,
                skips=[Skip(s, part, skip_pos)],
                observer=observe if later else None,
                return_hidden=True,
            )
            dp = (torch.softmax(runner.unembed(hL).float(), dim=-1) - probs).norm(dim=-1)  # (B,T)
            out["output"][s] = torch.maximum(out["output"][s], _mmax(dp, meas).cpu())
            if later:
                out["propagated"][s] = torch.maximum(out["propagated"][s], row)
            if local:
                src = _source(runner, hs, ctx, part, s) * skip_pos.unsqueeze(-1).to(hs.dtype)
                for tgt in range(s + 1, L):
                    a, m = runner.contributions(tgt, hs[tgt] - src, ctx)
                    v = _mmax(_rel_change(a + m, hs[tgt + 1] - hs[tgt]), meas).cpu()
                    out["local"][s, tgt] = torch.maximum(out["local"][s, tgt], v)
    return out


def depth_score_analysis(
    runner: ResidualRunner, batches: Sequence[TokenBatch], cfg: DepthScoreConfig, progress: bool = True
) -> dict:
    """Logit-effect depth score: mean over examples of the max future output effect per layer."""
    per_example = []
    for tb in tqdm(batches, desc="depth score", disable=not progress):
        per_example.append(_batch_effects(runner, tb, "layer", "future", cfg, later=False, local=False)["output"])
    dout = torch.cat(per_example, dim=1) if per_example else torch.zeros(runner.num_layers, 0)  # (L,N)
    mean_dout = dout.mean(dim=1) if dout.shape[1] else torch.zeros(runner.num_layers)
    total = float(mean_dout.sum())
    L = runner.num_layers
    score = depth_score(mean_dout.tolist())
    return {
        "mean_dout": mean_dout.tolist(),
        "distribution": (mean_dout / total).tolist() if total > 0 else [math.nan] * L,
        "depth_score": score,
        "relative_depth_score": score / (L - 1) if L > 1 else math.nan,
        "depth_score_se": bootstrap_se(dout),
        "num_layers": L,
        "examples": sum(tb.ids.shape[0] for tb in batches),
        "boundaries": list(cfg.boundaries),
        "boundary_positions": list(cfg.boundary_positions),
    }


def effects_analysis(
    runner: ResidualRunner, batches: Sequence[TokenBatch], cfg: EffectsConfig, progress: bool = True
) -> dict:
    """All heatmaps: for each part and mode, the (source x target) propagated and local
    relative-change maxima and the per-source output effect (max and mean of per-example max)."""
    cfg.validate()
    res: dict = {
        "num_layers": runner.num_layers,
        "examples": sum(tb.ids.shape[0] for tb in batches),
        "boundaries": list(cfg.boundaries),
        "boundary_positions": list(cfg.boundary_positions),
        "effects": {},
    }
    jobs = [(p, m) for p in cfg.parts for m in cfg.modes]
    bar = tqdm(total=len(jobs) * len(batches), desc="skip effects", disable=not progress)
    for part, mode in jobs:
        acc: dict[str, list[Tensor]] = {}
        for tb in batches:
            for k, v in _batch_effects(runner, tb, part, mode, cfg, later=True, local=cfg.local).items():
                acc.setdefault(k, []).append(v)
            bar.update(1)
        cat = {k: torch.cat(v, dim=-1) for k, v in acc.items()}
        entry = {
            "propagated": cat["propagated"].amax(-1).tolist(),
            "output_max": cat["output"].amax(-1).tolist(),
            "output_mean": cat["output"].mean(-1).tolist(),
        }
        if "local" in cat:
            entry["local"] = cat["local"].amax(-1).tolist()
        res["effects"][f"{part}/{mode}"] = entry
    bar.close()
    return res
