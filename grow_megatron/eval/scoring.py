"""Model-agnostic scoring: multiple choice by summed log-likelihood, and held-out NLL.

A model enters as a `LogitsFn`: token ids (B, T) -> logits or log-probs (B, T, V) for the next
token at every position. Logits and log-probs are interchangeable here because log_softmax
is idempotent. Batches are right-padded; a causal model never lets a real position see the
padding after it, so no attention mask is needed and the function can be anything causal
(a native model, a Hugging Face model, a test oracle).

Multiple choice follows lm-evaluation-harness's `acc`: the score of a choice is the sum of
the log-probs of its tokens given the prompt, where the choice's tokens are those that
encoding prompt+choice adds after the prompt's tokens (so BPE merges across the boundary
match what the model saw in training); highest score wins, the first on ties.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F

from grow_megatron.eval.tasks import MCExample

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, T) int64 token ids -> (B, T, V) logits or log-probs for the token after each position."""
Encode = Callable[[str], list[int]]
"""Text -> token ids, without special tokens."""


class MCScorer(Protocol):
    """Anything that scores the choices of multiple-choice examples (higher = more likely)."""

    def score(self, examples: Sequence[MCExample]) -> list[list[float]]: ...


def continuation_logprobs(logits_fn: LogitsFn, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                          batch_size: int = 16, pad_id: int = 0, max_length: int | None = None,
                          device: torch.device | str | None = None) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context_ids, continuation_ids).

    The context must be non-empty (prepend a BOS/EOS id if the model needs something to
    condition the first continuation token on). With max_length, the input is cut from the
    left to its last max_length tokens; the continuation itself is never cut.
    """
    items = []
    for i, (ctx, cont) in enumerate(requests):
        if not ctx or not cont:
            raise ValueError(f"request {i}: context and continuation must both be non-empty")
        seq = list(ctx) + list(cont)
        inp = seq[:-1]
        if max_length is not None:
            if len(cont) > max_length:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_length {max_length}")
            inp = inp[-max_length:]
        items.append((i, inp, list(cont)))
    # Longest first: similar lengths share a batch, and a too-large batch fails at once.
    items.sort(key=lambda it: -len(it[1]))
    out = [0.0] * len(items)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        width = len(chunk[0][1])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, (_, inp, _) in enumerate(chunk):
            ids[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
        with torch.no_grad():
            logits = logits_fn(ids if device is None else ids.to(device))
            for row, (i, inp, cont) in enumerate(chunk):
                n = len(cont)
                # Input position p predicts seq[p + 1]: the continuation is the last n targets.
                # Normalise only those rows: a full (B, T, V) fp32 log_softmax would not fit at V=49152.
                logp = torch.log_softmax(logits[row, len(inp) - n:len(inp)].float(), dim=-1)
                tgt = torch.tensor(cont, dtype=torch.long, device=logp.device)
                out[i] = float(logp.gather(-1, tgt[:, None]).sum())
    return out


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) the way lm-evaluation-harness splits them."""
    # Trailing spaces of the context belong to the continuation (BPE tokenizers attach a
    # space to the following word).
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = encode(context + continuation)
    ctx = encode(context)
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    # The tokenizer merged across the boundary: fall back to separate encodings.
    return ctx, encode(continuation)


@dataclass
class LogLikelihoodScorer:
    """MC scorer over any causal `LogitsFn` and tokenizer `encode`."""

    logits_fn: LogitsFn
    encode: Encode
    prefix_ids: tuple[int, ...] = ()
    """Prepended to every context (e.g. the BOS id, if the model was trained with one)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    pad_id: int = 0
    """Right padding; never scored, so any id works."""
    max_length: int | None = None
    """Model context; longer inputs keep their last max_length tokens."""
    device: torch.device | str | None = None
    """Where the ids go before logits_fn."""

    def requests(self, examples: Sequence[MCExample]) -> list[tuple[list[int], list[int]]]:
        reqs = []
        for ex in examples:
            for choice in ex.choices:
                ctx, cont = encode_pair(self.encode, ex.prompt, choice)
                reqs.append((list(self.prefix_ids) + ctx, cont))
        return reqs

    def score(self, examples: Sequence[MCExample]) -> list[list[float]]:
        flat = continuation_logprobs(self.logits_fn, self.requests(examples), self.batch_size, self.pad_id,
                                     self.max_length, self.device)
        out, k = [], 0
        for ex in examples:
            out.append(flat[k:k + len(ex.choices)])
            k += len(ex.choices)
        return out


def hf_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """LogitsFn of a Hugging Face causal LM (positions 0..T-1, which right padding keeps right)."""
    def fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, use_cache=False).logits

    return fn


def hf_scorer(model: torch.nn.Module, tokenizer, batch_size: int = 16, add_bos: bool = False,
              max_length: int | None = None) -> LogLikelihoodScorer:
    """MC scorer of an HF causal LM + tokenizer.

    Like lm-evaluation-harness's default, no BOS is added unless add_bos (the SmolLM
    tokenizer does not add one either).
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if add_bos and bos is None:
        raise ValueError("add_bos: the tokenizer has neither a BOS nor an EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return LogLikelihoodScorer(hf_logits_fn(model), encode, prefix_ids=(bos,) if add_bos else (),
                               batch_size=batch_size, pad_id=pad, max_length=max_length, device=device)


class OracleScorer:
    """Knows the answers: 0 for the correct choice, -1 for the others (a scorer's upper bound)."""

    def score(self, examples: Sequence[MCExample]) -> list[list[float]]:
        return [[0.0 if j == ex.answer else -1.0 for j in range(len(ex.choices))] for ex in examples]


@dataclass
class RandomScorer:
    """Uniformly random scores (ties have probability 0): accuracy = chance in expectation."""

    seed: int = 0
    """Seed of its own RNG, so a run is reproducible."""

    def score(self, examples: Sequence[MCExample]) -> list[list[float]]:
        rng = random.Random(self.seed)
        return [[rng.random() for _ in ex.choices] for ex in examples]


def predictions(scores: Sequence[Sequence[float]]) -> list[int]:
    """argmax per example, the first index on ties."""
    return [max(range(len(s)), key=lambda j: (s[j], -j)) for s in scores]


@dataclass(frozen=True)
class MCResult:
    """Accuracy of one task."""

    task: str
    n: int
    correct: int
    chance: float
    """Mean of 1/num_choices over the examples."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def stderr(self) -> float:
        """Binomial standard error of the accuracy."""
        p = self.accuracy
        return math.sqrt(p * (1 - p) / self.n) if self.n else float("nan")

    def to_dict(self) -> dict:
        return {"task": self.task, "n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                "stderr": self.stderr, "chance": self.chance}


def evaluate_mc(scorer: MCScorer, examples: Sequence[MCExample]) -> dict[str, MCResult]:
    """Score all examples once and report accuracy per task (MCExample.task)."""
    preds = predictions(scorer.score(examples))
    by_task: dict[str, list[tuple[bool, float]]] = {}
    for ex, p in zip(examples, preds):
        by_task.setdefault(ex.task, []).append((p == ex.answer, 1.0 / len(ex.choices)))
    return {t: MCResult(t, len(v), sum(ok for ok, _ in v), sum(c for _, c in v) / len(v)) for t, v in by_task.items()}


@dataclass(frozen=True)
class NLLResult:
    """Token-averaged negative log-likelihood (nats) of held-out text."""

    nll: float
    tokens: int
    """Number of predicted tokens."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        return {"nll": self.nll, "tokens": self.tokens, "perplexity": self.perplexity}


def heldout_nll(logits_fn: LogitsFn, batches: Iterable[torch.Tensor],
                device: torch.device | str | None = None) -> NLLResult:
    """Mean next-token cross-entropy over all batches (B, T): positions 1..T-1 of each row are
    predicted from the ones before them, every predicted token weighs the same."""
    total, count = 0.0, 0
    for ids in batches:
        ids = ids if device is None else ids.to(device)
        with torch.no_grad():
            logits = logits_fn(ids[:, :-1])
            # Row by row: the fp32 upcast of one row is small, of the whole batch it may not be.
            for row in range(ids.shape[0]):
                loss = F.cross_entropy(logits[row].float(), ids[row, 1:], reduction="sum")
                # float64 accumulation: millions of tokens summed in fp32 would lose digits.
                total += float(loss.double())
        count += ids[:, 1:].numel()
    if count == 0:
        raise ValueError("heldout_nll: no tokens to predict (need batches with T >= 2)")
    return NLLResult(total / count, count)


def chunk_tokens(ids: Sequence[int] | torch.Tensor, seq_length: int, batch_size: int,
                 max_chunks: int | None = None) -> list[torch.Tensor]:
    """Cut a token stream into non-overlapping (seq_length,) rows, batched; the tail that does
    not fill a row is dropped so every row has the same context length."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel() // seq_length
    if max_chunks is not None:
        n = min(n, max_chunks)
    rows = ids[:n * seq_length].view(n, seq_length)
    return [rows[i:i + batch_size] for i in range(0, n, batch_size)]
