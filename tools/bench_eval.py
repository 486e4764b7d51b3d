#!/usr/bin/env python
"""Eval speed: the reference scorer (one full forward per choice) against the KV-cached
shared-prefix scorer that `grow-megatron eval` uses, side by side in one process, on the same
model and the same items. Checks that accuracies are equal and per-choice log-likelihoods
agree to fp32 rounding, prints a table and writes JSON.

    python tools/bench_eval.py [--n 20] [--tasks paper] [--layers 12] [--context 128] [--json runs/bench_eval.json]
    python tools/bench_eval.py --model HF_DIR ...        # a real model instead of the random tiny one

The default model is the README's tiny run shape (12 layers, width 128, 4 heads / 2 KV
heads, SwiGLU 352, the embedded 4096-token BPE, context 128: 2.7M parameters) with random
weights: speed does not depend on what the weights learned, and random weights make
near-ties, so the accuracy check is strict. At context 128 the 5-shot prompts (215-350
tokens) are cut from the left by both scorers alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def tiny_model(layers: int, context: int, seed: int = 0):
    """(random LlamaForCausalLM of the tiny preset's shape, its HF tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from grow_megatron.config.model import PRESETS
    from grow_megatron.convert.api import hf_tokenizer
    from grow_megatron.data.tokenizer import load_tokenizer

    shape = PRESETS["tiny"]
    tok = load_tokenizer(None)
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["ffn_hidden_size"],
        num_hidden_layers=layers,
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_query_groups"],
        max_position_embeddings=context,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().eval(), hf_tokenizer(tok)


def run(scorer, examples, requests) -> tuple[list[list[float]], float, float]:
    """(scores, wall seconds, CPU seconds of this process): on a shared machine the CPU time is
    the steadier measure of the work done."""
    t0, c0 = time.perf_counter(), time.process_time()
    scores = scorer.score(examples, requests)
    return scores, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="an HF model directory (default: the random tiny model)")
    p.add_argument("--tasks", default="paper")
    p.add_argument("--n", type=int, default=20, help="examples per task")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--layers", type=int, default=12, help="depth of the random tiny model")
    p.add_argument("--context", type=int, default=128, help="context of the random tiny model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", default="runs/bench_eval.json")
    args = p.parse_args(argv)

    import torch

    from grow_megatron.eval import primitives as P
    from grow_megatron.eval import scoring as S

    torch.set_num_threads(args.threads)
    if args.model:
        from grow_megatron.convert.load import load_model

        loaded = load_model(args.model, accept="causal-lm", need_tokenizer=True)
        model, tok, name = loaded.model, loaded.tokenizer, args.model
    else:
        model, tok = tiny_model(args.layers, args.context)
        name = f"random tiny Llama, {args.layers} layers, context {args.context}"
    cfg = P.PrimitivesConfig(num_shots=args.shots).validate()
    examples = [ex for t in P.parse_tasks(args.tasks) for ex in P.generate(t, args.n, 0, cfg)]
    ref = S.hf_scorer(model, tok, batch_size=args.batch_size, reference=True)
    fast = S.hf_scorer(model, tok, batch_size=args.batch_size)
    c0 = time.process_time()
    reqs = fast.requests(examples)
    enc_fast = time.process_time() - c0
    c0 = time.process_time()
    if ref.requests(examples) != reqs:
        raise SystemExit("the two scorers tokenize differently")
    enc_ref = time.process_time() - c0
    max_len = S.context_length(model)
    truncated = sum(S.truncated_prompts(examples, reqs, max_len).values())
    params = sum(t.numel() for t in model.parameters())
    tok_ref, tok_fast = work_tokens(reqs, max_len)
    print(
        f"model: {name} ({params / 1e6:.1f}M parameters); {len(examples)} prompts, {len(reqs)} choices, "
        f"{truncated} prompts cut to the context of {max_len}; {args.threads} threads",
        file=sys.stderr,
    )

    run(fast, examples[:1], reqs[: len(examples[0].choices)])  # one-time costs (allocator, kernels) off the clock
    fast_scores, t_fast, c_fast = run(fast, examples, reqs)
    ref_scores, t_ref, c_ref = run(ref, examples, reqs)
    diffs = [abs(a - b) for fs, rs in zip(fast_scores, ref_scores) for a, b in zip(fs, rs)]
    acc_fast = S.evaluate_mc(_Fixed(fast_scores), examples)
    acc_ref = S.evaluate_mc(_Fixed(ref_scores), examples)
    same_acc = all(acc_fast[t].correct == acc_ref[t].correct for t in acc_ref)
    same_pred = S.predictions(fast_scores) == S.predictions(ref_scores)
    # fp32 rounding of sums of log-probs of magnitude ~|score|: a few ulp of the largest.
    tol = 64 * torch.finfo(torch.float32).eps * max(1.0, max(abs(x) for s in ref_scores for x in s))

    print(
        f"{'scorer':<34} {'wall s':>8} {'CPU s':>8} {'prompts/CPU s':>14} {'speedup (CPU)':>14} "
        f"{'+ tokenize CPU s':>17} {'speedup':>8}"
    )
    for label, t, c, e in (
        ("reference (1 forward per choice)", t_ref, c_ref, enc_ref),
        ("KV-cached shared prefix", t_fast, c_fast, enc_fast),
    ):
        print(
            f"{label:<34} {t:>8.2f} {c:>8.2f} {len(examples) / c:>14.1f} {c_ref / c:>13.1f}x "
            f"{c + e:>17.2f} {(c_ref + enc_ref) / (c + e):>7.1f}x"
        )
    print(f"{'task':<18} {'acc ref':>8} {'acc fast':>9}")
    for t in acc_ref:
        print(f"{t:<18} {100 * acc_ref[t].accuracy:>7.1f}% {100 * acc_fast[t].accuracy:>8.1f}%")
    print(
        f"accuracies equal: {same_acc}; predictions equal: {same_pred}; max |Δ log-likelihood| "
        f"{max(diffs):.2e} (fp32 tolerance {tol:.1e})"
    )
    print(
        f"tokens through the decoder layers: reference {tok_ref:,}, cached {tok_fast:,} ({tok_ref / tok_fast:.2f}x "
        f"fewer; with the output layer run at every reference position, this bounds the speed-up of any exact "
        f"prefix sharing)"
    )
    result = {
        "model": name,
        "parameters": params,
        "prompts": len(examples),
        "choices": len(reqs),
        "truncated_prompts": truncated,
        "context_length": max_len,
        "n": args.n,
        "tasks": args.tasks,
        "shots": args.shots,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds_reference": t_ref,
        "seconds_fast": t_fast,
        "cpu_seconds_reference": c_ref,
        "cpu_seconds_fast": c_fast,
        "speedup_cpu": c_ref / c_fast,
        "speedup_wall": t_ref / t_fast,
        "tokenize_cpu_seconds_reference": enc_ref,
        "tokenize_cpu_seconds_fast": enc_fast,
        "speedup_cpu_with_tokenizing": (c_ref + enc_ref) / (c_fast + enc_fast),
        "decoder_tokens_reference": tok_ref,
        "decoder_tokens_fast": tok_fast,
        "accuracies_equal": same_acc,
        "predictions_equal": same_pred,
        "max_abs_loglik_diff": max(diffs),
        "loglik_tolerance": tol,
        "accuracy": {t: {"reference": acc_ref[t].accuracy, "fast": acc_fast[t].accuracy} for t in acc_ref},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if same_acc and max(diffs) <= tol else 1


def work_tokens(reqs, max_len) -> tuple[int, int]:
    """Tokens that go through the decoder layers: (reference: every choice's whole input,
    cached: every distinct prefix once plus each choice's continuation[:-1]). Per-token cost
    is the same for both on this model (FLOP-bound; docs/benchmarks.md), so their ratio is
    the ceiling of exact prefix sharing, before the output layer the reference also runs."""
    from grow_megatron.eval import scoring as S

    splits = [S.split_request(c, x, max_len) for c, x in reqs]
    ref = sum(len(c) + len(x) - 1 if max_len is None else min(len(c) + len(x) - 1, max_len) for c, x in reqs)
    fast = sum(len(p) for p in {p for p, _ in splits}) + sum(len(x) - 1 for _, x in splits)
    return ref, fast


class _Fixed:
    """A scorer that returns precomputed scores (to reuse evaluate_mc's bookkeeping)."""

    def __init__(self, scores):
        self.scores = scores

    def score(self, examples):
        return self.scores


if __name__ == "__main__":
    sys.exit(main())
