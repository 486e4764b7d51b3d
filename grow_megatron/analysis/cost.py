"""What an analysis will cost, said before it runs.

Work is counted in layer passes over the tokens of a batch (one decoder layer applied to a
(B,T) batch); a full (B,T,V) unembedding counts as the layer passes of equal matmul FLOPs.
A timed probe (one full forward of the analysis' longest batch, the faster of two) turns
that into seconds.
The estimate ignores attention's quadratic term beyond the probe's length and the Python
overhead of tiny models, and a shared machine's load changes under it: a guide (within a
factor of about 2 on an idle machine), not a promise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grow_megatron.analysis.runner import ResidualRunner


@dataclass
class CostEstimate:
    """Work of one analysis on one model."""

    what: str
    """Human-readable breakdown (items x layers x interventions)."""
    passes: float
    """Layer passes, each over one batch of `tokens_per_batch` tokens."""
    tokens_per_batch: float
    """Mean padded tokens (B*T) per batch."""
    probe_seconds: float = float("nan")
    """Seconds of one full forward of the probe batch."""
    probe_tokens: int = 0
    """Padded tokens (B*T) of the probe batch."""
    num_layers: int = 0

    @property
    def seconds(self) -> float:
        per_pass_token = self.probe_seconds / max(1, self.num_layers * self.probe_tokens)
        return self.passes * self.tokens_per_batch * per_pass_token

    def line(self, label: str, name: str) -> str:
        return (
            f"[analyze] {name} on {label}: {self.what}; estimated {format_seconds(self.seconds)} "
            f"(probe: one {self.num_layers}-layer forward of {self.probe_tokens} tokens in "
            f"{self.probe_seconds:.2f} s)"
        )


def format_seconds(s: float) -> str:
    if s != s:  # nan
        return "unknown"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def unembed_passes(runner: ResidualRunner) -> float:
    """A (B,T,V) unembedding in layer passes: lm_head matmul FLOPs / one layer's matmul FLOPs."""
    c = runner.core.config
    d, f, V = c.hidden_size, c.intermediate_size, c.vocab_size
    heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    hd = getattr(c, "head_dim", None) or d // heads
    layer = d * hd * (2 * heads + 2 * kv) + 3 * d * f
    return d * V / layer


@torch.no_grad()
def probe(runner: ResidualRunner, ids: torch.Tensor, est: CostEstimate, **run_kw) -> CostEstimate:
    """Time one full forward of `ids` (B,T) and attach it to the estimate: the faster of two
    runs, since the first also pays one-off set-up (kernel selection, lazy imports)."""
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        runner.hidden_states(ids.to(runner.device), **run_kw)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    est.probe_seconds = min(times)
    est.probe_tokens = int(ids.numel())
    est.num_layers = runner.num_layers
    return est


def mean_tokens(shapes: Sequence[torch.Size]) -> float:
    return sum(s[0] * s[1] for s in shapes) / max(1, len(shapes))


def interventions_cost(
    L: int, n_batches: int, tokens: float, rest_steps: Sequence[int], examples: int, rows: int
) -> CostEstimate:
    """rest_steps: per intervention, the layers it runs after the reused prefix."""
    passes = n_batches * (L + sum(rest_steps))
    return CostEstimate(
        f"{examples} examples ({rows} choices, {n_batches} packed batches) x "
        f"({L} + {sum(rest_steps)} resumed layers of {len(rest_steps)} interventions) = "
        f"{passes:,} layer passes",
        passes,
        tokens,
    )


def effects_cost(
    runner: ResidualRunner, n_batches: int, tokens: float, jobs: Sequence[tuple[str, int]], local: bool
) -> CostEstimate:
    """jobs: (part, settings per batch) per heatmap; each setting resumes L runs at s."""
    L, U = runner.num_layers, unembed_passes(runner)
    per_batch = 0.0
    for part, n_set in jobs:
        runs = L * (L + 1) / 2 + L * U  # propagated runs from s, each with an output unembedding
        runs += L * (L - 1) / 2 if local else 0  # one target layer per (source, target)
        runs += L if part != "layer" else 0  # the stored attention output of the source
        per_batch += L + U + n_set * runs
    passes = n_batches * per_batch
    what = f"{n_batches} batches x {len(jobs)} settings x {L} skipped layers = {passes:,.0f} layer passes"
    return CostEstimate(what, passes, tokens)


def forward_cost(runner: ResidualRunner, n_batches: int, tokens: float, per_batch: float, what: str) -> CostEstimate:
    passes = n_batches * per_batch
    return CostEstimate(f"{what} = {passes:,.0f} layer passes", passes, tokens)
