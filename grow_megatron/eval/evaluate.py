"""One evaluation of a loaded model: the reasoning primitives (with a cost estimate and a
warning for prompts cut to the context) and the held-out NLL of text files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from grow_megatron.config.base import ConfigError
from grow_megatron.eval import primitives, scoring

DEFAULT_N = 200
"""Examples per task of `grow-megatron eval`."""
QUICK_N = 50
"""Examples per task with --quick."""
QUICK_CHUNKS = 32
"""Held-out windows per file with --quick."""


def read_heldout_ids(path: str, tokenizer) -> list[int]:
    """Token stream of a held-out file (no special tokens except EOS between jsonl documents)."""
    p = Path(path)
    if p.suffix == ".jsonl":
        ids: list[int] = []
        eos = tokenizer.eos_token_id
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        text = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise ConfigError(
                            "--heldout",
                            path,
                            f"line {n} is not a JSON object with a 'text' field "
                            '(give .jsonl of {"text": ...} or a plain-text file)',
                        ) from None
                    ids += tokenizer(text, add_special_tokens=False)["input_ids"]
                    if eos is not None:
                        ids.append(eos)
        return ids
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("--heldout", path, "is not UTF-8 text (give a plain-text or .jsonl file)") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def max_shots_that_fit(
    tasks: list[str], n: int, seed: int, shots: int, encode, limit: int, longest_choice: int
) -> int | None:
    """The most shots with which every prompt (plus its longest choice) fits `limit` tokens."""
    for k in range(shots - 1, -1, -1):
        cfg = primitives.PrimitivesConfig(num_shots=k)
        if all(
            len(encode(ex.prompt)) + longest_choice - 1 <= limit
            for t in tasks
            for ex in primitives.generate(t, n, seed, cfg)
        ):
            return k
    return None


def warn_truncation(
    truncated: dict[str, int], examples, requests, limit: int, tasks: list[str], n: int, seed: int, shots: int, encode
) -> None:
    """One warning line when prompts were cut to the model's context, with the shots that would fit."""
    cut = sum(truncated.values())
    if not cut:
        return
    longest = max(len(c) + len(k) - 1 for c, k in requests)
    fits = max_shots_that_fit(tasks, n, seed, shots, encode, limit, max(len(k) for _, k in requests))
    fix = (
        f"--shots {fits} (the most that fits every prompt)" if fits is not None else "shorter prompts"
    ) + " or a model with a longer context"
    print(
        f"WARNING: {cut} of {len(examples)} prompts are longer than the model's context of {limit} tokens "
        f"(longest input {longest}) and are cut from the left, so the model sees fewer than the {shots} "
        f"shots asked for and the accuracies are not {shots}-shot numbers. Fix: {fix}.",
        file=sys.stderr,
    )


def estimate(scorer, examples, requests, device: str) -> tuple[list[list[float]], int]:
    """Score the first few prompts, print what the whole evaluation will cost, return their scores
    and the number of requests they used."""
    k = min(len(examples), 8)
    m = sum(len(ex.choices) for ex in examples[:k])
    t0 = time.perf_counter()
    first = scorer.score(examples[:k], requests[:m])
    dt = time.perf_counter() - t0
    tokens = sum(len(c) for c, _ in requests)
    first_tokens = sum(len(c) for c, _ in requests[:m])
    est = dt * tokens / max(first_tokens, 1)
    print(
        f"eval: {len(examples):,} prompts x {len(requests) / len(examples):.1f} choices = {len(requests):,} "
        f"choices, {tokens / len(requests):.0f} tokens per prompt; estimated {est:.0f} s on {device} "
        f"(timed on the first {k} prompts){'' if est < 120 else '; --quick for a cheaper first look'}",
        file=sys.stderr,
    )
    return first, m


def evaluate_primitives(
    model, tokenizer, tasks: list[str], n: int, seed: int, shots: int, batch_size: int, add_bos: bool, device: str
) -> tuple[dict[str, scoring.MCResult], int, float]:
    """(results per task, prompts cut to the context, seconds) of `tasks` on a Hugging Face model."""
    cfg = primitives.PrimitivesConfig(num_shots=shots).validate()
    scorer = scoring.hf_scorer(model, tokenizer, batch_size=batch_size, add_bos=add_bos, progress=sys.stderr.isatty())
    examples = [ex for t in tasks for ex in primitives.generate(t, n, seed, cfg)]
    t0 = time.perf_counter()
    requests = scorer.requests(examples)
    truncated = scoring.truncated_prompts(examples, requests, scorer.max_length)
    warn_truncation(truncated, examples, requests, scorer.max_length, tasks, n, seed, shots, scorer.encode)
    first, m = estimate(scorer, examples, requests, device)
    k = len(first)
    scores = first + (scorer.score(examples[k:], requests[m:]) if k < len(examples) else [])
    return scoring.results_from_scores(scores, examples, truncated), sum(truncated.values()), time.perf_counter() - t0


def heldout_batches(path: str, tokenizer, seq: int, batch_size: int, max_chunks: int | None) -> list:
    """The NLL batches of a held-out file: rows of seq + 1 tokens (T inputs predict T targets)."""
    batches = scoring.chunk_tokens(read_heldout_ids(path, tokenizer), seq + 1, batch_size, max_chunks)
    if not batches:
        raise ConfigError(
            "--heldout", path, f"has fewer than {seq + 1} tokens: give more text or a smaller --seq-length"
        )
    return batches


def evaluate_heldout(
    model, tokenizer, path: str, seq: int, batch_size: int, max_chunks: int | None, device: str
) -> scoring.NLLResult:
    """Held-out NLL of the text in `path` at context length `seq`."""
    batches = heldout_batches(path, tokenizer, seq, batch_size, max_chunks)
    return scoring.heldout_nll(scoring.hf_logits_fn(model), batches, device=device, vocab_size=len(tokenizer))


def format_mc(results: dict[str, scoring.MCResult]) -> str:
    """The primitives table: accuracy ± standard error, chance, prompts cut; the mean row for several tasks."""
    lines = [f"{'task':<18} {'n':>6} {'acc':>7} {'±se':>6} {'chance':>7}  {'cut':>5}"]
    for r in results.values():
        flag = "  ~ chance (within 2 se)" if r.near_chance else ""
        lines.append(
            f"{r.task:<18} {r.n:>6} {100 * r.accuracy:>6.2f}% {100 * r.stderr:>5.2f} "
            f"{100 * r.chance:>6.1f}%  {r.truncated:>5}{flag}"
        )
    if len(results) > 1:
        m = scoring.mean_result(results)
        lines.append(
            f"{'mean':<18} {m['n']:>6} {100 * m['accuracy']:>6.2f}% {100 * m['stderr']:>5.2f} "
            f"{100 * m['chance']:>6.1f}%"
        )
    lines.append(
        "±se: binomial standard error; differences under about 2 se (between models or tasks) are noise. "
        "cut: prompts cut to the model's context."
    )
    return "\n".join(lines)
