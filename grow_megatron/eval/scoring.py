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

Two implementations compute the same sums. `continuation_logprobs` runs one full forward per
(prompt, choice) through any `LogitsFn`; it is the reference (tests and tools/bench_eval.py
hold the fast path to it) and the path for models that are only a function.
`prefix_cached_logprobs` is what `grow-megatron eval` uses on Hugging Face models: each
distinct context is run once with the KV cache on (up to batch_size contexts of any lengths
per forward, only their last positions through the output layer), and the choices of all
those contexts are then scored against that cache in one more forward.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from grow_megatron.eval.tasks import MCExample

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, T) int64 token ids -> (B, T, V) logits or log-probs for the token after each position."""
Encode = Callable[[str], list[int]]
"""Text -> token ids, without special tokens."""


class MCScorer(Protocol):
    """Anything that scores the choices of multiple-choice examples (higher = more likely)."""

    def score(self, examples: Sequence[MCExample]) -> list[list[float]]: ...


def continuation_logprobs(
    logits_fn: LogitsFn,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    pad_id: int = 0,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> list[float]:
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
        chunk = items[start : start + batch_size]
        width = len(chunk[0][1])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for row, (_, inp, _) in enumerate(chunk):
            ids[row, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        with torch.no_grad():
            logits = logits_fn(ids if device is None else ids.to(device))
            for row, (i, inp, cont) in enumerate(chunk):
                n = len(cont)
                # Input position p predicts seq[p + 1]: the continuation is the last n targets.
                # Normalise only those rows: a full (B, T, V) fp32 log_softmax would not fit at V=49152.
                logp = torch.log_softmax(logits[row, len(inp) - n : len(inp)].float(), dim=-1)
                tgt = torch.tensor(cont, dtype=torch.long, device=logp.device)
                out[i] = float(logp.gather(-1, tgt[:, None]).sum())
    return out


def _move_space(context: str, continuation: str) -> tuple[str, str]:
    # Trailing spaces of the context belong to the continuation (BPE tokenizers attach a
    # space to the following word).
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        return context[:-n_space], context[-n_space:] + continuation
    return context, continuation


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) the way lm-evaluation-harness splits them."""
    context, continuation = _move_space(context, continuation)
    whole = encode(context + continuation)
    ctx = encode(context)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    # The tokenizer merged across the boundary: fall back to separate encodings.
    return ctx, encode(continuation)


def mc_requests(
    examples: Sequence[MCExample],
    encode: Encode,
    prefix_ids: Sequence[int] = (),
    encode_batch: Callable[[list[str]], list[list[int]]] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of every choice of every example, in order. With
    encode_batch, every distinct text is encoded once, in one call (a prompt is shared by all
    its choices)."""
    if encode_batch is not None:
        texts = set()
        for ex in examples:
            for choice in ex.choices:
                ctx, cont = _move_space(ex.prompt, choice)
                texts.update((ctx, ctx + cont))
        order = sorted(texts)
        table = dict(zip(order, encode_batch(order)))
        single = encode

        def encode(text: str) -> list[int]:  # noqa: F811 - the table first, the fallback split rarely
            return table[text] if text in table else single(text)

    reqs = []
    for ex in examples:
        for choice in ex.choices:
            ctx, cont = encode_pair(encode, ex.prompt, choice)
            reqs.append((list(prefix_ids) + ctx, cont))
    return reqs


def _per_example(flat: Sequence[float], examples: Sequence[MCExample]) -> list[list[float]]:
    out, k = [], 0
    for ex in examples:
        out.append(list(flat[k : k + len(ex.choices)]))
        k += len(ex.choices)
    return out


def truncated_prompts(
    examples: Sequence[MCExample], requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int | None
) -> dict[str, int]:
    """Per task, how many examples have a choice whose scoring input (context + continuation
    minus its last token) is longer than max_length, i.e. loses tokens from the left."""
    out = {ex.task: 0 for ex in examples}
    if max_length is None:
        return out
    k = 0
    for ex in examples:
        n = len(ex.choices)
        if any(len(ctx) + len(cont) - 1 > max_length for ctx, cont in requests[k : k + n]):
            out[ex.task] += 1
        k += n
    return out


@dataclass
class LogLikelihoodScorer:
    """MC scorer over any causal `LogitsFn` and tokenizer `encode` (one forward per choice; the
    reference implementation, see the module docstring)."""

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
        return mc_requests(examples, self.encode, self.prefix_ids)

    def score(
        self, examples: Sequence[MCExample], requests: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None
    ) -> list[list[float]]:
        reqs = self.requests(examples) if requests is None else requests
        flat = continuation_logprobs(self.logits_fn, reqs, self.batch_size, self.pad_id, self.max_length, self.device)
        return _per_example(flat, examples)


# --- shared-prefix scoring with the KV cache ---------------------------------------------------


def split_request(
    ctx: Sequence[int], cont: Sequence[int], max_length: int | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prefix, continuation): the prefix is the input up to the position that predicts the
    continuation's first token, cut from the left exactly as `continuation_logprobs` cuts
    context + continuation[:-1] to max_length, so both paths score the same tokens."""
    if not ctx or not cont:
        raise ValueError("context and continuation must both be non-empty")
    if max_length is not None:
        if len(cont) > max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length {max_length}")
        if len(ctx) + len(cont) - 1 > max_length:
            return tuple(ctx[len(ctx) - (max_length - len(cont) + 1) :]), tuple(cont)
    return tuple(ctx), tuple(cont)


def _cache_keyword(model: torch.nn.Module) -> str:
    # transformers >= 5.2x calls the KV cache argument `cache`; older versions `past_key_values`.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    cache=None,
    keep: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
):
    """(logits (B, T or len(keep), V), KV cache) of an HF causal LM on ids (B, T) after `cache`;
    keep: the positions that go through the output layer (all when None)."""
    params = inspect.signature(model.forward).parameters
    kwargs: dict = {"input_ids": ids, "use_cache": True}
    if cache is not None:
        kwargs[_cache_keyword(model)] = cache
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if keep is not None and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep  # the output layer only where a prediction is scored
    out = model(**kwargs)
    new_cache = out["cache"] if "cache" in out else out["past_key_values"]
    logits = out.logits
    if keep is not None and "logits_to_keep" not in params:
        logits = logits[:, keep]
    return logits, new_cache


def prefix_cached_logprobs(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[float]:
    """The sums of `continuation_logprobs` for an HF causal LM, each distinct prefix run once.

    Up to batch_size prefixes of any lengths share a forward, right-padded: a causal model
    never lets a real token see the padding after it, so each row gets positions 0..len-1 and
    the numbers of its unpadded run. The first continuation token is scored from the logits
    at the prefix's last real position; the remaining ones in one more forward of the batch's
    choices against the prefix KV cache (`_score_tails`). Two forwards per batch of prompts:
    the model is small enough on CPU that per-forward overhead counts.
    """
    splits = [split_request(ctx, cont, max_length) for ctx, cont in requests]
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, (prefix, _) in enumerate(splits):
        by_prefix.setdefault(prefix, []).append(i)
    # Longest first: a batch too large for memory fails at once, and neighbours in the order
    # have similar lengths, so little of a batch is padding.
    order = sorted(by_prefix, key=len, reverse=True)
    out = [0.0] * len(splits)
    bar = None
    if progress:
        bar = tqdm(total=len(order), desc="score", unit="prompt", leave=False)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lens = torch.tensor([len(p) for p in batch])  # (P,)
        width = int(lens[0])
        ids = torch.zeros((len(batch), width), dtype=torch.long)  # (P, W)
        for g, prefix in enumerate(batch):
            ids[g, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        real = torch.arange(width)[None, :] < lens[:, None]  # (P, W): not padding
        last, row_of_last = torch.unique(lens - 1, return_inverse=True)  # distinct last positions
        with torch.inference_mode():
            logits, cache = _forward(model, ids.to(device), keep=last.to(device))  # (P, len(last), V)
            rows = torch.arange(len(batch), device=logits.device)
            first = logits[rows, row_of_last.to(logits.device)].float()  # (P, V)
            logp0 = torch.log_softmax(first, dim=-1).cpu()
            # All multi-token continuations of a prompt go in its one tail row, one after the
            # other: (prefix row, request, offset in the row) of each.
            segs: list[tuple[int, int, int]] = []
            fill = [0] * len(batch)
            for g, prefix in enumerate(batch):
                for i in by_prefix[prefix]:
                    cont = splits[i][1]
                    out[i] = float(logp0[g, cont[0]])
                    if len(cont) > 1:
                        segs.append((g, i, fill[g]))
                        fill[g] += len(cont) - 1
            if segs:
                _score_tails(model, cache, segs, fill, splits, lens, real, out, device)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return out


def _score_tails(
    model: torch.nn.Module,
    cache,
    segs: list[tuple[int, int, int]],
    fill: list[int],
    splits: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
    lens: torch.Tensor,
    real: torch.Tensor,
    out: list[float],
    device,
) -> None:
    """Add to out[i] the log-probs of continuation tokens 2.. of every request in segs, in one
    forward against the prefix cache (P rows of width W, `real` marks its non-padding slots).

    Row g holds continuation[:-1] of each of its prompt's choices back to back; a 4D mask lets
    each segment see its prefix's real slots and itself causally (not the other choices), and
    its position ids restart at the prefix length, so every token has the inputs and RoPE
    position of the reference's unpadded run. The cache is used as is: no copy per choice.
    """
    n_rows, width = real.shape
    tail_w = max(fill)
    tail = torch.zeros((n_rows, tail_w), dtype=torch.long)  # (P, Wt): continuation[:-1] of each choice
    tgt = torch.zeros((n_rows, tail_w), dtype=torch.long)  # (P, Wt): continuation[1:]
    seg = torch.full((n_rows, tail_w), -1, dtype=torch.long)  # (P, Wt): segment index, -1 on padding
    offset = torch.zeros((n_rows, tail_w), dtype=torch.long)  # (P, Wt): position within the segment
    for k, (g, i, start) in enumerate(segs):
        cont = splits[i][1]
        n = len(cont) - 1
        tail[g, start : start + n] = torch.tensor(cont[:-1], dtype=torch.long)
        tgt[g, start : start + n] = torch.tensor(cont[1:], dtype=torch.long)
        seg[g, start : start + n] = k
        offset[g, start : start + n] = torch.arange(n)
    # (P, Wt, Wt): same segment and not in the future; the diagonal always, so padding
    # queries attend to something (their outputs are never read).
    own = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    own &= torch.ones(tail_w, tail_w, dtype=torch.bool).tril()
    own |= torch.eye(tail_w, dtype=torch.bool)
    allowed = torch.cat([real[:, None, :].expand(n_rows, tail_w, width), own], dim=2)[:, None]  # (P, 1, Wt, W+Wt)
    dtype = next(model.parameters()).dtype
    # Additive form: what both the SDPA and the eager attention accept as a ready 4D mask.
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    pos = lens[:, None] + offset  # (P, Wt)
    logits, _ = _forward(
        model, tail.to(device), cache=cache, attention_mask=mask.to(device), position_ids=pos.to(device)
    )  # (P, Wt, V)
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, tgt.to(logits.device)[..., None])[..., 0].cpu()
    sums = torch.zeros(len(segs), dtype=picked.dtype)
    sums.index_add_(0, seg[seg >= 0], picked[seg >= 0])  # (S,): per segment
    for (_, i, _), s in zip(segs, sums.tolist()):
        out[i] += s


@dataclass
class CachedPrefixScorer:
    """MC scorer of a Hugging Face causal LM that runs each prompt once (`prefix_cached_logprobs`);
    the scores equal `LogLikelihoodScorer`'s up to fp32 rounding."""

    model: torch.nn.Module
    encode: Encode
    prefix_ids: tuple[int, ...] = ()
    """Prepended to every context (e.g. the BOS id, if the model was trained with one)."""
    batch_size: int = 16
    """Prompts per forward pass (their choices go together in one more)."""
    max_length: int | None = None
    """Model context; longer inputs keep their last max_length tokens, as in the reference."""
    device: torch.device | str | None = None
    """Where the ids go (the model's device)."""
    progress: bool = False
    """A progress bar over prompts."""
    encode_batch: Callable[[list[str]], list[list[int]]] | None = None
    """Many texts -> their ids in one call (a fast tokenizer's batch path); optional."""

    def requests(self, examples: Sequence[MCExample]) -> list[tuple[list[int], list[int]]]:
        return mc_requests(examples, self.encode, self.prefix_ids, self.encode_batch)

    def score(
        self, examples: Sequence[MCExample], requests: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None
    ) -> list[list[float]]:
        reqs = self.requests(examples) if requests is None else requests
        flat = prefix_cached_logprobs(self.model, reqs, self.batch_size, self.max_length, self.device, self.progress)
        return _per_example(flat, examples)


def hf_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """LogitsFn of a Hugging Face causal LM (positions 0..T-1, which right padding keeps right)."""

    def fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, use_cache=False).logits

    return fn


def hf_scorer(
    model: torch.nn.Module,
    tokenizer,
    batch_size: int = 16,
    add_bos: bool = False,
    max_length: int | None = None,
    reference: bool = False,
    progress: bool = False,
) -> CachedPrefixScorer | LogLikelihoodScorer:
    """MC scorer of an HF causal LM + tokenizer: the KV-cached one, or with reference=True the
    one-forward-per-choice reference (same scores up to fp32 rounding).

    Like lm-evaluation-harness's default, no BOS is added unless add_bos (the SmolLM
    tokenizer does not add one either).
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if add_bos and bos is None:
        raise ValueError("add_bos: the tokenizer has neither a BOS nor an EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    if max_length is None:
        max_length = context_length(model)
    prefix = (bos,) if add_bos else ()

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    if reference:
        return LogLikelihoodScorer(
            hf_logits_fn(model),
            encode,
            prefix_ids=prefix,
            batch_size=batch_size,
            pad_id=pad,
            max_length=max_length,
            device=device,
        )
    return CachedPrefixScorer(
        model,
        encode,
        prefix_ids=prefix,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        progress=progress,
        encode_batch=encode_batch,
    )


def context_length(model: torch.nn.Module) -> int | None:
    """The longest input an HF model has position embeddings for (None when it does not say)."""
    return getattr(model.config, "max_position_embeddings", None)


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
    truncated: int = 0
    """Examples whose input was cut from the left to fit the model's context."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def stderr(self) -> float:
        """Binomial standard error of the accuracy."""
        p = self.accuracy
        return math.sqrt(p * (1 - p) / self.n) if self.n else float("nan")

    @property
    def near_chance(self) -> bool:
        """Within two standard errors of chance (the binomial se at chance, so that 0 correct
        out of a few does not count as certain): not distinguishable from guessing."""
        se = math.sqrt(self.chance * (1 - self.chance) / self.n) if self.n else float("nan")
        return abs(self.accuracy - self.chance) <= 2 * max(se, self.stderr)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "stderr": self.stderr,
            "chance": self.chance,
            "near_chance": self.near_chance,
            "truncated": self.truncated,
        }


def evaluate_mc(
    scorer: MCScorer, examples: Sequence[MCExample], requests=None, truncated: dict[str, int] | None = None
) -> dict[str, MCResult]:
    """Score all examples once and report accuracy per task (MCExample.task). requests: the
    scorer's own encoding of the examples, when the caller already made it; truncated: per
    task, how many examples were cut to the context (`truncated_prompts`), recorded."""
    scores = scorer.score(examples) if requests is None else scorer.score(examples, requests)
    return results_from_scores(scores, examples, truncated)


def results_from_scores(
    scores: Sequence[Sequence[float]], examples: Sequence[MCExample], truncated: dict[str, int] | None = None
) -> dict[str, MCResult]:
    """Accuracy per task of already computed choice scores."""
    preds = predictions(scores)
    by_task: dict[str, list[tuple[bool, float]]] = {}
    for ex, p in zip(examples, preds):
        by_task.setdefault(ex.task, []).append((p == ex.answer, 1.0 / len(ex.choices)))
    return {
        t: MCResult(t, len(v), sum(ok for ok, _ in v), sum(c for _, c in v) / len(v), (truncated or {}).get(t, 0))
        for t, v in by_task.items()
    }


def mean_result(results: dict[str, MCResult]) -> dict:
    """Unweighted mean over tasks (Table 6's Mean) with its standard error sqrt(sum se^2) / k
    (tasks are independent samples) and the mean chance level."""
    k = len(results)
    acc = sum(r.accuracy for r in results.values()) / k
    se = math.sqrt(sum(r.stderr**2 for r in results.values())) / k
    chance = sum(r.chance for r in results.values()) / k
    return {"accuracy": acc, "stderr": se, "chance": chance, "tasks": k, "n": sum(r.n for r in results.values())}


@dataclass(frozen=True)
class NLLResult:
    """Token-averaged negative log-likelihood (nats) of held-out text."""

    nll: float
    tokens: int
    """Number of predicted tokens."""
    stderr: float = float("nan")
    """Standard error of the mean NLL, over windows: tokens of one window are correlated, the
    windows (disjoint stretches of text, all the same length) are the independent samples."""
    windows: int = 0
    """Number of windows (sequences) the tokens came in."""
    chance: float | None = None
    """NLL of a uniform guess over the vocabulary, ln(V)."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        return {
            "nll": self.nll,
            "stderr": self.stderr,
            "tokens": self.tokens,
            "windows": self.windows,
            "perplexity": self.perplexity,
            "chance": self.chance,
        }


def heldout_nll(
    logits_fn: LogitsFn,
    batches: Iterable[torch.Tensor],
    device: torch.device | str | None = None,
    vocab_size: int | None = None,
) -> NLLResult:
    """Mean next-token cross-entropy over all batches (B, T): positions 1..T-1 of each row are
    predicted from the ones before them, every predicted token weighs the same."""
    total, count = 0.0, 0
    row_means: list[float] = []
    for ids in batches:
        ids = ids if device is None else ids.to(device)
        with torch.no_grad():
            logits = logits_fn(ids[:, :-1])
            # Row by row: the fp32 upcast of one row is small, of the whole batch it may not be.
            for row in range(ids.shape[0]):
                loss = F.cross_entropy(logits[row].float(), ids[row, 1:], reduction="sum")
                # float64 accumulation: millions of tokens summed in fp32 would lose digits.
                total += float(loss.double())
                row_means.append(float(loss.double()) / (ids.shape[1] - 1))
        count += ids[:, 1:].numel()
    if count == 0:
        raise ValueError("heldout_nll: no tokens to predict (need batches with T >= 2)")
    w = len(row_means)
    mean = sum(row_means) / w
    se = math.sqrt(sum((x - mean) ** 2 for x in row_means) / (w - 1) / w) if w > 1 else float("nan")
    return NLLResult(total / count, count, se, w, math.log(vocab_size) if vocab_size else None)


def chunk_tokens(
    ids: Sequence[int] | torch.Tensor, seq_length: int, batch_size: int, max_chunks: int | None = None
) -> list[torch.Tensor]:
    """Cut a token stream into non-overlapping (seq_length,) rows, batched; the tail that does
    not fill a row is dropped so every row has the same context length."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel() // seq_length
    if max_chunks is not None:
        n = min(n, max_chunks)
    rows = ids[: n * seq_length].view(n, seq_length)
    return [rows[i : i + batch_size] for i in range(0, n, batch_size)]
