"""Tuned lens (docs/method.md §7; Belrose et al. 2023): per-layer affine translators to the final norm input.

Translator i maps the residual output of layer i, h_{i+1}, to h + A_i h + c_i (A_i = 0, c_i = 0
at init, so an untrained lens is the logit lens); logits = lm_head(norm(translator(h))).
Trained to minimise KL(final || lens) on held-out text. The last layer's output already is
the final norm's input, so its identity translator is exact (KL = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from grow_megatron.analysis.data import (
    EncodedMC,
    TokenBatch,
    accuracy,
    accuracy_se,
    chance_accuracy,
    choice_logliks,
    mc_batches,
)
from grow_megatron.analysis.runner import ResidualRunner
from grow_megatron.config.base import check


@dataclass
class LensConfig:
    """Options of tuned-lens training and evaluation."""

    steps: int = 250
    """Optimizer steps (each on one token batch, cycling through the training batches)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """sgd: Nesterov momentum 0.9 as the tuned-lens reference code; adam: scale-free steps."""
    lr: float = 1.0
    """Learning rate (1.0 suits sgd; use about 1e-3 with adam)."""
    weight_decay: float = 1e-3
    """Decay of A and c, i.e. towards the identity translator."""
    batch_size: int = 8
    """Sequences per batch."""
    seq_len: int = 128
    """Tokens per training/evaluation sequence."""
    max_sequences: int = 256
    """Number of token sequences read (training + evaluation)."""
    eval_fraction: float = 0.2
    """Share of the token sequences held out for evaluation (KL, top-5 overlap)."""
    top_k: int = 5
    """k of the top-k overlap with the final prediction."""

    def validate(self, path: str = "tuned-lens") -> None:
        check(self.steps >= 0, f"{path}.steps", self.steps, "must be >= 0")
        check(self.lr > 0, f"{path}.lr", self.lr, "must be > 0")
        check(self.weight_decay >= 0, f"{path}.weight_decay", self.weight_decay, "must be >= 0")
        check(0 <= self.eval_fraction < 1, f"{path}.eval_fraction", self.eval_fraction, "must be in [0, 1)")
        for name in ("batch_size", "seq_len", "max_sequences", "top_k"):
            check(getattr(self, name) >= 1, f"{path}.{name}", getattr(self, name), "must be >= 1")


class TunedLens(nn.Module):
    """L translators h -> h + A h + c, stored stacked: A (L,d,d), c (L,d)."""

    def __init__(self, num_layers: int, hidden: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(num_layers, hidden, hidden))
        self.c = nn.Parameter(torch.zeros(num_layers, hidden))

    @property
    def num_layers(self) -> int:
        return self.A.shape[0]

    def translate(self, layer: int, h: Tensor) -> Tensor:
        """(…,d) -> (…,d), computed in the translator's dtype."""
        x = h.to(self.A.dtype)
        return x + x @ self.A[layer].T + self.c[layer]

    def save(self, path: str, meta: dict | None = None) -> None:
        torch.save({"A": self.A.detach().cpu(), "c": self.c.detach().cpu(), "meta": dict(meta or {})}, path)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> TunedLens:
        state = torch.load(path, map_location=device, weights_only=True)
        lens = cls(*state["A"].shape[:2]).to(device)
        with torch.no_grad():
            lens.A.copy_(state["A"])
            lens.c.copy_(state["c"])
        return lens


def lens_logits(runner: ResidualRunner, lens: TunedLens | None, layer: int, h: Tensor) -> Tensor:
    """Early-exit logits (…,V) from layer `layer`'s residual output h (…,d); lens None = logit lens."""
    x = h if lens is None else lens.translate(layer, h).to(h.dtype)
    return runner.unembed(x)


def _kl(final_logp: Tensor, lens_logits_: Tensor) -> Tensor:
    """KL(final || lens) per token: (…,V),(…,V) -> (…)."""
    lp = torch.log_softmax(lens_logits_.float(), dim=-1)
    return (final_logp.exp() * (final_logp - lp)).sum(-1)


def train_lens(
    runner: ResidualRunner, batches: Sequence[TokenBatch], cfg: LensConfig, progress: bool = True
) -> TunedLens:
    """Fit one translator per layer on `batches`; the model stays frozen."""
    L, d = runner.num_layers, runner.core.config.hidden_size
    lens = TunedLens(L, d).to(runner.device)
    if not batches:
        return lens
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(lens.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(lens.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Freeze the model while training (no .grad on lm_head/norm), then restore its flags.
    flags = [(p, p.requires_grad) for p in runner.model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        _fit(runner, lens, opt, batches, cfg, progress)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return lens


def _fit(
    runner: ResidualRunner,
    lens: TunedLens,
    opt: torch.optim.Optimizer,
    batches: Sequence[TokenBatch],
    cfg: LensConfig,
    progress: bool,
) -> None:
    L = runner.num_layers
    for step in tqdm(range(cfg.steps), desc="tuned lens", disable=not progress):
        tb = batches[step % len(batches)]
        with torch.no_grad():
            hs, _ = runner.hidden_states(tb.ids)  # (L+1,B,T,d)
            valid = tb.valid().to(hs.device)
            final_logp = torch.log_softmax(runner.unembed(hs[-1][valid]).float(), dim=-1)  # (N,V)
        opt.zero_grad(set_to_none=True)
        # One layer's graph at a time: peak memory is one (N,V) logits tensor with grad.
        # The last translator stays the identity (exact by construction): its KL gradient is
        # pure rounding noise, which Adam's normalisation would turn into lr-sized steps.
        for i in range(L - 1):
            loss = _kl(final_logp, lens_logits(runner, lens, i, hs[i + 1][valid])).mean()
            loss.backward()
        # Large residual norms can make early steps huge; clipping keeps the first steps sane.
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()


@torch.no_grad()
def evaluate_lens(
    runner: ResidualRunner, lens: TunedLens | None, batches: Sequence[TokenBatch], top_k: int = 5, progress: bool = True
) -> dict:
    """Per layer (0..L-1, early exit after that layer): mean KL(final || lens) and mean top-k
    overlap |topk(lens) ∩ topk(final)| / k, over all real tokens."""
    L = runner.num_layers
    kl_sum, ov_sum, n = torch.zeros(L), torch.zeros(L), 0
    for tb in tqdm(batches, desc="lens eval", disable=not progress):
        hs, _ = runner.hidden_states(tb.ids)
        valid = tb.valid().to(hs.device)
        final = runner.unembed(hs[-1][valid]).float()  # (N,V)
        final_logp = torch.log_softmax(final, dim=-1)
        final_top = final.topk(top_k, dim=-1).indices  # (N,k)
        for i in range(L):
            lg = lens_logits(runner, lens, i, hs[i + 1][valid]).float()
            kl_sum[i] += _kl(final_logp, lg).sum().cpu()
            top = lg.topk(top_k, dim=-1).indices  # (N,k)
            ov_sum[i] += ((top[:, :, None] == final_top[:, None, :]).any(-1).float().sum(-1) / top_k).sum().cpu()
        n += int(valid.sum())
    n = max(n, 1)
    return {"kl": (kl_sum / n).tolist(), "top_k_overlap": (ov_sum / n).tolist(), "top_k": top_k, "tokens": n}


@torch.no_grad()
def early_exit_accuracy(
    runner: ResidualRunner,
    lens: TunedLens | None,
    enc: EncodedMC,
    batch_size: int = 16,
    progress: bool = True,
    pack: bool = True,
) -> dict:
    """MC accuracy when exiting after each layer through the lens (index L-1 = the full model
    when the last translator is the identity), and the same relative to the full model.
    pack: all choices of a prompt in one row (data.MCBatch); False: one row per choice."""
    L = runner.num_layers
    scores = torch.zeros(L, len(enc.seqs))
    final = torch.zeros(len(enc.seqs))
    for mb in tqdm(mc_batches(enc, batch_size, pack), desc="early exit", disable=not progress):
        rows = torch.tensor(mb.rows)
        cache: dict[int, Tensor] = {}

        def observe(step: int, layer: int, h: Tensor, a: Tensor, m: Tensor) -> None:
            out = h + a + m
            cache[step] = choice_logliks(out, mb, lambda x, s=step: lens_logits(runner, lens, s, x)).cpu()

        hL = runner.run(
            mb.batch.ids, observer=observe, return_hidden=True, position_ids=mb.position_ids, segments=mb.segments
        )
        for i in range(L):
            scores[i, rows] = cache[i]
        final[rows] = choice_logliks(hL, mb, runner.unembed).cpu()
    acc = [accuracy(enc, scores[i]) for i in range(L)]
    full = accuracy(enc, final)
    rel = [a / full if full > 0 else math.nan for a in acc]
    n = len(enc.answers)
    return {
        "accuracy": acc,
        "final_accuracy": full,
        "relative_accuracy": rel,
        "examples": n,
        "final_se": accuracy_se(full, n),
        "chance_accuracy": chance_accuracy(enc),
    }
