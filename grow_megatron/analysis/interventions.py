"""Benchmarked interventions (docs/method.md §7): re-score a multiple-choice task after changing the
layer order — swap two adjacent windows of k layers, skip k consecutive layers, reverse k
consecutive layers — at every valid start position.

Per batch the unmodified residual states are computed once (the one stored copy); each
intervened order resumes from the state before its first changed step, so an intervention at
layer s costs L - s layers instead of L.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from grow_megatron.analysis.data import EncodedMC, accuracy, accuracy_se, chance_accuracy, choice_logliks, mc_batches
from grow_megatron.analysis.runner import ResidualRunner, first_changed, reverse_order, skip_order, swap_order
from grow_megatron.config.base import check

KINDS = {"swap": swap_order, "skip": skip_order, "reverse": reverse_order}


@dataclass
class InterventionConfig:
    """Options of the benchmarked interventions."""

    swap_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Window sizes k of 'swap [s, s+k) with [s+k, s+2k)'."""
    skip_sizes: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Numbers k of consecutive layers left out."""
    reverse_sizes: list[int] = field(default_factory=lambda: [4])
    """Numbers k of consecutive layers run in reverse order."""
    batch_size: int = 16
    """(example, choice) rows per forward pass."""
    max_length: int = 1024
    """Longest row in tokens; longer prompts are cut from the left."""

    def validate(self, path: str = "interventions") -> None:
        for name in ("swap_sizes", "skip_sizes", "reverse_sizes"):
            v = getattr(self, name)
            check(all(k >= 1 for k in v), f"{path}.{name}", v, "sizes must be >= 1")
        for name in ("batch_size", "max_length"):
            check(getattr(self, name) >= 1, f"{path}.{name}", getattr(self, name), "must be >= 1")


def intervention_orders(L: int, cfg: InterventionConfig) -> dict[str, dict[int, dict[int, list[int]]]]:
    """kind -> k -> start -> layer order, for every valid start."""
    sizes = {"swap": cfg.swap_sizes, "skip": cfg.skip_sizes, "reverse": cfg.reverse_sizes}
    out: dict[str, dict[int, dict[int, list[int]]]] = {}
    for kind, ks in sizes.items():
        for k in ks:
            span = 2 * k if kind == "swap" else k
            if k <= 0 or span > L or (kind == "skip" and k >= L):
                continue
            out.setdefault(kind, {})[k] = {s: KINDS[kind](L, s, k) for s in range(L - span + 1)}
    return out


Intervention = tuple[str, int, int, list[int]]
"""(kind, k, start, layer order)."""


def flat_interventions(L: int, cfg: InterventionConfig) -> list[Intervention]:
    return [
        (kind, k, s, o)
        for kind, d in intervention_orders(L, cfg).items()
        for k, starts in d.items()
        for s, o in starts.items()
    ]


@torch.no_grad()
def intervention_scores(
    runner: ResidualRunner, enc: EncodedMC, cfg: InterventionConfig, progress: bool = True, pack: bool = True
) -> tuple[Tensor, Tensor, list[Intervention]]:
    """Per-row choice log-likelihoods: unmodified (R,) and per intervention (J,R).

    Per batch the unmodified residual states are computed once; an intervention whose first
    changed step is n resumes from h_n and runs only steps n.. of its order. Rows are packed
    (data.MCBatch): each prompt is run once for all its choices."""
    L = runner.num_layers
    flat = flat_interventions(L, cfg)
    R = len(enc.seqs)
    base = torch.zeros(R)
    scores = torch.zeros(len(flat), R)
    batches = mc_batches(enc, cfg.batch_size, pack)
    bar = tqdm(total=len(batches) * (len(flat) + 1), desc="interventions", disable=not progress)
    for mb in batches:
        rows = torch.tensor(mb.rows)
        hs, ctx = runner.hidden_states(
            mb.batch.ids.to(runner.device), position_ids=mb.position_ids, segments=mb.segments
        )  # (L+1,B,T,d)
        base[rows] = choice_logliks(hs[-1], mb, runner.unembed).cpu()
        bar.update(1)
        for j, (_, _, _, order) in enumerate(flat):
            n = first_changed(order, L)
            hL = runner.run(order=order, h=hs[n], start=n, ctx=ctx, return_hidden=True)
            scores[j, rows] = choice_logliks(hL, mb, runner.unembed).cpu()
            bar.update(1)
    bar.close()
    return base, scores, flat


def intervention_analysis(
    runner: ResidualRunner, enc: EncodedMC, cfg: InterventionConfig, progress: bool = True
) -> dict:
    """Accuracy of the unmodified model and of every intervention (kind -> k -> per start),
    with the number of examples, binomial standard errors and the chance accuracy."""
    base, scores, flat = intervention_scores(runner, enc, cfg, progress)
    n = len(enc.answers)
    acc0 = accuracy(enc, base)
    res: dict = {
        "num_layers": runner.num_layers,
        "examples": n,
        "baseline_accuracy": acc0,
        "baseline_se": accuracy_se(acc0, n),
        "chance_accuracy": chance_accuracy(enc),
        "interventions": {},
    }
    for j, (kind, k, s, _) in enumerate(flat):
        res["interventions"].setdefault(kind, {}).setdefault(str(k), {"starts": [], "accuracy": [], "se": []})
        e = res["interventions"][kind][str(k)]
        e["starts"].append(s)
        e["accuracy"].append(accuracy(enc, scores[j]))
        e["se"].append(accuracy_se(e["accuracy"][-1], n))
    return res
