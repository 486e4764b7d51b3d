"""Inputs of the analyses: token batches of text and encoded multiple-choice tasks.

Both come as right-padded (B,T) id tensors plus per-row lengths (see runner.py for why right
padding needs no mask). Multiple-choice rows are one (example, choice) pair each; a choice is
scored by the summed log-likelihood of its tokens, and the example's prediction is the argmax.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from grow_megatron.eval.tasks import MCExample


@dataclass
class TokenBatch:
    """Right-padded token ids."""

    ids: Tensor
    """(B,T) long."""
    lengths: Tensor
    """(B,) long, number of real tokens per row."""

    def valid(self) -> Tensor:
        """(B,T) bool, True on real tokens."""
        T = self.ids.shape[1]
        return torch.arange(T, device=self.lengths.device)[None, :] < self.lengths[:, None]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> TokenBatch:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return TokenBatch(ids, torch.tensor([len(s) for s in seqs], dtype=torch.long))


def token_batches(data: Tensor | Sequence[Sequence[int]], batch_size: int) -> list[TokenBatch]:
    """Split sequences (N,T) or a list of id lists into right-padded batches."""
    rows = [list(map(int, r)) for r in (data.tolist() if isinstance(data, Tensor) else data)]
    rows = [r for r in rows if len(r) >= 2]
    return [pad_batch(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def load_token_data(path: str, tokenizer: Any | None, seq_len: int, max_sequences: int) -> list[list[int]]:
    """Sequences of at most seq_len ids from a file.

    .npy / .pt: an integer array (N,T) or 1-D stream of token ids (chunked into seq_len);
    .txt: plain text; .jsonl: one object per line with a "text" field (each tokenized with
    the model's tokenizer and cut into seq_len chunks).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in (".npy", ".pt"):
        if ext == ".npy":
            import numpy as np

            arr = torch.from_numpy(np.load(path)).long()
        else:
            arr = torch.as_tensor(torch.load(path, weights_only=True)).long()
        if arr.dim() == 1:
            n = arr.numel() // seq_len
            arr = arr[:n * seq_len].view(n, seq_len)
        return [r[:seq_len] for r in arr.tolist()][:max_sequences]
    if tokenizer is None:
        raise ValueError(f"{path}: text data needs the model's tokenizer, and the model has none")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()] if ext == ".jsonl" else [f.read()]
    out: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        out.extend(ids[i:i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) >= 2)
        if len(out) >= max_sequences:
            break
    return out[:max_sequences]


def load_tasks(spec: str, n: int = 200, seed: int = 0) -> list[MCExample]:
    """MC examples from a JSONL file (one {"prompt", "choices", "answer", "task"?} per line,
    e.g. `grow-megatron eval --export-lm-eval` output) or, for a spec that is not a file,
    reasoning primitives by name ('varassign_math', 'paper', 'all', comma lists): n per task."""
    if not os.path.isfile(spec):
        from grow_megatron.eval import primitives

        return [ex for task in primitives.parse_tasks(spec) for ex in primitives.generate(task, n, seed)]
    path = spec
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.append(MCExample(d["prompt"], tuple(d["choices"]), int(d["answer"]), d.get("task", "")))
    return out


# --------------------------------------------------------------------- multiple choice
@dataclass
class EncodedMC:
    """Multiple-choice examples as one token row per (example, choice)."""

    seqs: list[list[int]]
    """prompt ids + choice ids, per row."""
    starts: list[int]
    """Index in the row of the first choice token."""
    example: list[int]
    """Which example each row belongs to."""
    answers: list[int]
    """Correct choice per example."""
    choice: list[int]
    """Choice index of each row."""


def encode_mc(examples: Sequence[MCExample], tokenizer: Any, max_length: int = 1024,
              add_bos: bool = False) -> EncodedMC:
    """Token rows split into (prompt, choice) exactly as `grow-megatron eval` does
    (`eval.scoring.encode_pair`, lm-evaluation-harness's rule, no special tokens unless
    add_bos), so accuracies here match the evaluator's; long prompts are cut from the left."""
    from grow_megatron.eval.scoring import encode_pair

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if add_bos and bos is None:
        raise ValueError("add_bos: the tokenizer has neither a BOS nor an EOS token")
    prefix = [bos] if add_bos else []
    enc = EncodedMC([], [], [], [ex.answer for ex in examples], [])
    for e, ex in enumerate(examples):
        for c, choice in enumerate(ex.choices):
            ctx, cont = encode_pair(encode, ex.prompt, choice)
            p = prefix + ctx
            if not p or not cont:
                raise ValueError(f"example {e}, choice {c}: prompt and choice must both tokenize to something")
            keep = max(1, max_length - len(cont))
            pp = p[-keep:]
            enc.seqs.append(pp + cont)
            enc.starts.append(len(pp))
            enc.example.append(e)
            enc.choice.append(c)
    return enc


@dataclass
class MCBatch:
    batch: TokenBatch
    rows: list[int]
    """Indices into EncodedMC rows."""
    score_mask: Tensor
    """(B,T) bool: positions whose next token is a choice token."""
    targets: Tensor
    """(B,T) long: the next token at each position (0 where unused)."""


def mc_batches(enc: EncodedMC, batch_size: int) -> list[MCBatch]:
    """Batches of rows sorted by length (less padding)."""
    order = sorted(range(len(enc.seqs)), key=lambda r: len(enc.seqs[r]))
    out = []
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        tb = pad_batch([enc.seqs[r] for r in rows])
        B, T = tb.ids.shape
        mask = torch.zeros(B, T, dtype=torch.bool)
        targets = torch.zeros(B, T, dtype=torch.long)
        for j, r in enumerate(rows):
            n, s = len(enc.seqs[r]), enc.starts[r]
            mask[j, s - 1:n - 1] = True
            targets[j, :n - 1] = tb.ids[j, 1:n]
        out.append(MCBatch(tb, rows, mask, targets))
    return out


def choice_logliks(h: Tensor, mb: MCBatch, logits_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Summed log-likelihood (B,) of each row's choice tokens.

    h: (B,T,d) residual states; logits_fn maps selected states (N,d) to logits (N,V). Only the
    scored positions are unembedded, so the (B,T,V) logits are never materialised."""
    mask = mb.score_mask.to(h.device)
    sel = h[mask]  # (N,d)
    logp = torch.log_softmax(logits_fn(sel).float(), dim=-1)  # (N,V)
    tok = mb.targets.to(h.device)[mask]  # (N,)
    lp = logp.gather(-1, tok[:, None]).squeeze(-1)  # (N,)
    row = torch.arange(mask.shape[0], device=h.device)[:, None].expand_as(mask)[mask]  # (N,)
    return torch.zeros(mask.shape[0], device=h.device, dtype=lp.dtype).index_add_(0, row, lp)


def accuracy(enc: EncodedMC, row_scores: Tensor) -> float:
    """Fraction of examples whose highest-scoring choice is the answer; row_scores (R,)."""
    best: dict[int, tuple[float, int]] = {}
    for r, s in enumerate(row_scores.tolist()):
        e = enc.example[r]
        if e not in best or s > best[e][0]:
            best[e] = (s, enc.choice[r])
    if not best:
        return float("nan")
    return sum(best[e][1] == enc.answers[e] for e in best) / len(best)
