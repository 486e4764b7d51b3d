"""Inputs of the analyses: token batches of text and encoded multiple-choice tasks.

Both come as right-padded (B,T) id tensors plus per-row lengths (see runner.py for why right
padding needs no mask). Multiple-choice rows are one (example, choice) pair each; a choice is
scored by the summed log-likelihood of its tokens, and the example's prediction is the argmax.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grow_megatron.eval import primitives
from grow_megatron.eval.scoring import encode_pair
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
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return TokenBatch(ids, torch.tensor([len(s) for s in seqs], dtype=torch.long))


def token_batches(data: Tensor | Sequence[Sequence[int]], batch_size: int) -> list[TokenBatch]:
    """Split sequences (N,T) or a list of id lists into right-padded batches."""
    rows = [list(map(int, r)) for r in (data.tolist() if isinstance(data, Tensor) else data)]
    rows = [r for r in rows if len(r) >= 2]
    return [pad_batch(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def load_token_data(path: str, tokenizer: Any | None, seq_len: int, max_sequences: int) -> list[list[int]]:
    """Sequences of at most seq_len ids from a file.

    .npy / .pt: an integer array (N,T) or 1-D stream of token ids (chunked into seq_len);
    .txt: plain text; .jsonl: one object per line with a "text" field (each tokenized with
    the model's tokenizer and cut into seq_len chunks).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in (".npy", ".pt"):
        if ext == ".npy":
            arr = torch.from_numpy(np.load(path)).long()
        else:
            arr = torch.as_tensor(torch.load(path, weights_only=True)).long()
        if arr.dim() == 1:
            n = arr.numel() // seq_len
            arr = arr[: n * seq_len].view(n, seq_len)
        return [r[:seq_len] for r in arr.tolist()][:max_sequences]
    if tokenizer is None:
        raise ValueError(f"{path}: text data needs the model's tokenizer, and the model has none")
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()] if ext == ".jsonl" else [f.read()]
    out: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        out.extend(ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) >= 2)
        if len(out) >= max_sequences:
            break
    return out[:max_sequences]


def load_tasks(spec: str, n: int = 200, seed: int = 0) -> list[MCExample]:
    """MC examples from a JSONL file (one {"prompt", "choices", "answer", "task"?} per line,
    e.g. `grow-megatron eval --export-lm-eval` output) or, for a spec that is not a file,
    reasoning primitives by name ('varassign_math', 'paper', 'all', comma lists): n per task."""
    if not os.path.isfile(spec):
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


def encode_mc(
    examples: Sequence[MCExample], tokenizer: Any, max_length: int = 1024, add_bos: bool = False
) -> EncodedMC:
    """Token rows split into (prompt, choice) exactly as `grow-megatron eval` does
    (`eval.scoring.encode_pair`, lm-evaluation-harness's rule, no special tokens unless
    add_bos), so accuracies here match the evaluator's; long prompts are cut from the left."""

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
    """Multiple-choice rows packed for one forward pass.

    Packed (the default): the choices of one example share its prompt, so a packed row is
    the prompt once followed by every choice's tokens; `segments` keeps each choice from
    seeing the others (a choice token attends to the prompt and to earlier tokens of its own
    choice) and `position_ids` restart every choice right after the prompt. The scores equal
    one row per (prompt + choice) up to float rounding, at 1/num_choices of the prompt cost.
    Unpacked: one row per (example, choice), plain causal positions (segments None)."""

    batch: TokenBatch
    """(B,T) ids, right-padded."""
    rows: list[int]
    """EncodedMC rows scored in this batch."""
    score_index: Tensor
    """(N,) long: flat index into (B*T) of each position whose next token is a choice token."""
    targets: Tensor
    """(N,) long: that next token."""
    score_row: Tensor
    """(N,) long: which entry of `rows` each scored position belongs to."""
    position_ids: Tensor | None = None
    """(B,T) long rotary positions; None for 0..T-1."""
    segments: Tensor | None = None
    """(B,T) long: 0 on the shared prompt, c+1 on choice c's tokens, -1 on padding; None for
    plain causal attention."""


def _pack_groups(enc: EncodedMC, pack: bool) -> list[list[int]]:
    """Rows grouped into packed rows: one group per (example, identical prompt ids)."""
    if not pack:
        return [[r] for r in range(len(enc.seqs))]
    groups: dict[tuple, list[int]] = {}
    for r, (seq, s) in enumerate(zip(enc.seqs, enc.starts)):
        # Choices of different lengths may cut a long prompt differently: pack only equal prompts.
        groups.setdefault((enc.example[r], tuple(seq[:s])), []).append(r)
    return list(groups.values())


def mc_batches(enc: EncodedMC, batch_size: int, pack: bool = True) -> list[MCBatch]:
    """Batches of `batch_size` packed rows (see MCBatch), sorted by length (less padding)."""
    groups = _pack_groups(enc, pack)
    length = [enc.starts[g[0]] + sum(len(enc.seqs[r]) - enc.starts[r] for r in g) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: length[i])
    out = []
    for i in range(0, len(order), batch_size):
        chunk = [groups[j] for j in order[i : i + batch_size]]
        seqs, pos, seg = [], [], []
        idx, tgt, who, rows = [], [], [], []
        T = max(length[j] for j in order[i : i + batch_size])
        for b, g in enumerate(chunk):
            P = enc.starts[g[0]]
            seq, p, sg = list(enc.seqs[g[0]][:P]), list(range(P)), [0] * P
            for c, r in enumerate(g):
                cont = enc.seqs[r][P:]
                # Position (in the packed row) predicting each choice token: the prompt's last
                # token for the first one, then the choice's own previous tokens.
                prev = [P - 1] + [len(seq) + k for k in range(len(cont) - 1)]
                idx += [b * T + q for q in prev]
                tgt += cont
                who += [len(rows)] * len(cont)
                rows.append(r)
                seq += cont
                p += range(P, P + len(cont))
                sg += [c + 1] * len(cont)
            seqs.append(seq)
            pos.append(p + list(range(len(p), T)))
            seg.append(sg + [-1] * (T - len(sg)))
        tb = pad_batch(seqs)
        packed = pack and any(len(g) > 1 for g in chunk)
        out.append(
            MCBatch(
                tb,
                rows,
                torch.tensor(idx),
                torch.tensor(tgt),
                torch.tensor(who),
                torch.tensor(pos) if packed else None,
                torch.tensor(seg) if packed else None,
            )
        )
    return out


def choice_logliks(h: Tensor, mb: MCBatch, logits_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Summed log-likelihood (len(mb.rows),) of each row's choice tokens.

    h: (B,T,d) residual states; logits_fn maps selected states (N,d) to logits (N,V). Only the
    scored positions are unembedded, so the (B,T,V) logits are never materialised."""
    sel = h.reshape(-1, h.shape[-1])[mb.score_index.to(h.device)]  # (N,d)
    logp = torch.log_softmax(logits_fn(sel).float(), dim=-1)  # (N,V)
    lp = logp.gather(-1, mb.targets.to(h.device)[:, None]).squeeze(-1)  # (N,)
    return torch.zeros(len(mb.rows), device=h.device, dtype=lp.dtype).index_add_(0, mb.score_row.to(h.device), lp)


def chance_accuracy(enc: EncodedMC) -> float:
    """Expected accuracy of guessing: mean over examples of 1 / number of choices."""
    n: dict[int, int] = {}
    for e in enc.example:
        n[e] = n.get(e, 0) + 1
    return sum(1 / c for c in n.values()) / len(n) if n else float("nan")


def accuracy_se(acc: float, n: int) -> float:
    """Standard error of an accuracy over n independent examples: binomial, with the add-two
    (Agresti-Coull) estimate p~ = (k + 1) / (n + 2), sqrt(p~ (1 - p~) / (n + 2)), so that 0 of n
    correct still has an uncertainty (plain sqrt(p (1 - p) / n) would say 0 +- 0)."""
    if n <= 0 or acc != acc:
        return float("nan")
    p = (acc * n + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / (n + 2))


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
