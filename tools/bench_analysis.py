#!/usr/bin/env python
"""Depth-analysis benchmark: multiple-choice scoring under interventions, before and after
shared-prompt packing, side by side in one process on the same model and items.

  python tools/bench_analysis.py [--model HF_DIR] [--n 2] [--sizes default|small] [--threads 1]
                                 [--json runs/bench_analysis.json]

Workload: the paper's five reasoning primitives (`--n` examples each, 5-shot prompts of about
330 tokens, 5 or 10 one-token choices) on a random Llama with the `tiny` preset's shape
(12 layers, width 128, SwiGLU 352, 4 heads / 2 KV groups, the embedded 4096-token tokenizer),
or on `--model` (an HF directory with a tokenizer).

Compared, each with the unmodified residual stream computed once per batch and every
intervention resumed from the stored state before its first changed layer:
  before: one row per (example, choice) — the implementation before packing;
  after:  one packed row per example (prompt once, then every choice, segment mask).
Checked: every per-choice log-likelihood agrees within fp32 rounding (relative 256 ulp of the
score) and every accuracy is equal. Also timed the same way: early-exit (logit lens) scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch


def tiny_model(seed: int = 0):
    """Random fp32 Llama of the `tiny` preset's shape and the embedded default tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from grow_megatron.data.assets import default_tokenizer_path

    tok = PreTrainedTokenizerFast(tokenizer_file=default_tokenizer_path())
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=12,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _check_equal(name: str, before: torch.Tensor, after: torch.Tensor) -> float:
    """Max |after - before|; raises unless within relative 256 ulp (fp32) of the score."""
    tol = 256 * torch.finfo(torch.float32).eps * before.abs().clamp_min(1.0)
    diff = (after - before).abs()
    if not bool((diff <= tol).all()):
        raise SystemExit(f"{name}: scores differ beyond fp32 rounding (max {float(diff.max()):.3g})")
    return float(diff.max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF model directory with tokenizer (default: random tiny-preset Llama)")
    p.add_argument("--n", type=int, default=2, help="examples per primitive task (5 tasks)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward (packed rows after)")
    p.add_argument(
        "--sizes",
        choices=("default", "small"),
        default="default",
        help="interventions: the defaults (swap 1,2,4,8; skip 1,2,4; reverse 4) or small "
        "(swap 1; skip 1; reverse 4) for a busy machine",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    p.add_argument("--json", default="runs/bench_analysis.json", help="where to write the results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from grow_megatron.analysis.data import accuracy, encode_mc, load_tasks
    from grow_megatron.analysis.interventions import InterventionConfig, intervention_scores
    from grow_megatron.analysis.runner import ResidualRunner
    from grow_megatron.convert.load import load_model

    if args.model:
        loaded = load_model(args.model)
        model, tok = loaded.model, loaded.tokenizer
    else:
        model, tok = tiny_model()
    runner = ResidualRunner(model)
    examples = load_tasks("paper", args.n, 0)
    enc = encode_mc(examples, tok)
    cfg = InterventionConfig(batch_size=args.batch_size)
    if args.sizes == "small":
        cfg = InterventionConfig(swap_sizes=[1], skip_sizes=[1], reverse_sizes=[4], batch_size=args.batch_size)
    L = runner.num_layers
    print(
        f"model: {args.model or 'random tiny-preset Llama'} ({L} layers), {len(examples)} examples, "
        f"{len(enc.seqs)} (example, choice) rows, {sum(map(len, enc.seqs))} tokens unpacked",
        file=sys.stderr,
    )

    rows = []
    with torch.no_grad():
        (b0, s0, flat), t_before = _timed(lambda: intervention_scores(runner, enc, cfg, progress=False, pack=False))
        (b1, s1, _), t_after = _timed(lambda: intervention_scores(runner, enc, cfg, progress=False, pack=True))
    d = max(_check_equal("unmodified", b0, b1), _check_equal("interventions", s0, s1))
    acc0 = [accuracy(enc, b0)] + [accuracy(enc, s0[j]) for j in range(len(flat))]
    acc1 = [accuracy(enc, b1)] + [accuracy(enc, s1[j]) for j in range(len(flat))]
    if acc0 != acc1:
        raise SystemExit("interventions: accuracies differ between before and after")
    rows.append(
        {
            "what": f"interventions ({len(flat)} orders + unmodified)",
            "before_s": t_before,
            "after_s": t_after,
            "speedup": t_before / t_after,
            "max_abs_loglik_diff": d,
            "accuracies_equal": True,
        }
    )

    ee0, t0 = _timed(lambda: _early_exit(runner, enc, args.batch_size, pack=False))
    ee1, t1 = _timed(lambda: _early_exit(runner, enc, args.batch_size, pack=True))
    if ee0["accuracy"] != ee1["accuracy"]:
        raise SystemExit("early exit: accuracies differ between before and after")
    rows.append(
        {
            "what": f"early exit, logit lens ({L} exits)",
            "before_s": t0,
            "after_s": t1,
            "speedup": t0 / t1,
            "accuracies_equal": True,
        }
    )

    print("\n| scoring | before (s) | after (s) | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['before_s']:.1f} | {r['after_s']:.1f} | {r['speedup']:.2f}x |")
    out = {
        "command": "python tools/bench_analysis.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "interventions": len(flat),
        "model": args.model or "random tiny-preset Llama (12 x 128, vocab 4096)",
        "layers": L,
        "examples": len(examples),
        "rows": len(enc.seqs),
        "tokens_unpacked": sum(map(len, enc.seqs)),
        "threads": args.threads,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {args.json}")
    return 0


def _early_exit(runner, enc, batch_size: int, pack: bool) -> dict:
    """early_exit_accuracy with the logit lens, packed or one row per choice."""
    from grow_megatron.analysis.lens import early_exit_accuracy

    with torch.no_grad():
        return early_exit_accuracy(runner, None, enc, batch_size, progress=False, pack=pack)


if __name__ == "__main__":
    sys.exit(main())
