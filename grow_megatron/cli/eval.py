"""`grow-megatron eval`: reasoning primitives (SPEC 8) and held-out NLL of a model.

    grow-megatron eval HF_DIR --tasks paper --n 200 --seed 0 [--heldout val.txt] [--json out.json]
    grow-megatron eval HF_DIR --quick                                  # 50 examples per task, 32 NLL windows
    grow-megatron eval --export-lm-eval DIR --tasks paper --n 1000     # lm-eval task files, no model

MODEL is a Hugging Face causal-LM directory (config.json + weights + tokenizer files), or a
native grow_megatron checkpoint / run directory (converted in memory); both go through
grow_megatron.convert.load, which checks the model type before loading anything.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from grow_megatron.config.base import ConfigError
from grow_megatron.config.loop import LOOP_HELP, check_loop_arg
from grow_megatron.eval import primitives as P
from grow_megatron.eval import scoring as S

DEFAULT_N = 200
QUICK_N = 50
QUICK_CHUNKS = 32


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grow-megatron eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="HF model directory (or a native checkpoint, via grow_megatron.convert)")
    p.add_argument("--tasks", default="paper",
                   help=f"'paper' (Table 6's five), 'all', 'none', or a comma list of: {', '.join(P.TASKS)}")
    p.add_argument("--n", type=int, help=f"examples per task (default {DEFAULT_N}; {QUICK_N} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"a cheap first look: {QUICK_N} examples per task and at most {QUICK_CHUNKS} held-out "
                        "windows per file (standard errors are about twice those of the defaults)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--shots", type=int, default=5, help="solved examples before each query")
    p.add_argument("--heldout", metavar="FILE", action="append", default=[],
                   help="held-out text for NLL: plain text (one stream) or .jsonl with a 'text' field per "
                        "document (documents joined with EOS); repeatable")
    p.add_argument("--seq-length", type=int, help="NLL context length (default: min(2048, the model's))")
    p.add_argument("--max-chunks", type=int, help="at most this many NLL sequences per file")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--add-bos", action="store_true", help="prepend the BOS token to every MC context")
    p.add_argument("--config", help="a native checkpoint's run config.yaml, when the checkpoint was copied out of "
                                    "its run directory (default: RUN_DIR/config.yaml)")
    p.add_argument("--json", metavar="PATH", help="write results as JSON ('-' for stdout)")
    p.add_argument("--loop", metavar="SPEC", help=LOOP_HELP)
    p.add_argument("--export-lm-eval", metavar="DIR",
                   help="write the tasks as lm-evaluation-harness jsonl + yaml into DIR (see docs/eval.md)")
    return p


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
                        raise ConfigError("--heldout", path, f"line {n} is not a JSON object with a 'text' field "
                                                             "(give .jsonl of {\"text\": ...} or a plain-text file)") from None
                    ids += tokenizer(text, add_special_tokens=False)["input_ids"]
                    if eos is not None:
                        ids.append(eos)
        return ids
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("--heldout", path, "is not UTF-8 text (give a plain-text or .jsonl file)") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _print_mc(results: dict[str, S.MCResult]) -> None:
    print(f"{'task':<18} {'n':>6} {'acc':>7} {'±se':>6} {'chance':>7}  {'cut':>5}")
    for r in results.values():
        flag = "  ~ chance (within 2 se)" if r.near_chance else ""
        print(f"{r.task:<18} {r.n:>6} {100 * r.accuracy:>6.2f}% {100 * r.stderr:>5.2f} {100 * r.chance:>6.1f}%  "
              f"{r.truncated:>5}{flag}")
    if len(results) > 1:
        m = S.mean_result(results)
        print(f"{'mean':<18} {m['n']:>6} {100 * m['accuracy']:>6.2f}% {100 * m['stderr']:>5.2f} "
              f"{100 * m['chance']:>6.1f}%")
    print("±se: binomial standard error; differences under about 2 se (between models or tasks) are noise. "
          "cut: prompts cut to the model's context.")


def _max_shots_that_fit(tasks: list[str], n: int, seed: int, shots: int, encode, limit: int,
                        longest_choice: int) -> int | None:
    """The most shots with which every prompt (plus its longest choice) fits `limit` tokens."""
    for k in range(shots - 1, -1, -1):
        cfg = P.PrimitivesConfig(num_shots=k)
        if all(len(encode(ex.prompt)) + longest_choice - 1 <= limit
               for t in tasks for ex in P.generate(t, n, seed, cfg)):
            return k
    return None


def _warn_truncation(truncated: dict[str, int], examples, requests, limit: int, args, tasks, n, encode) -> None:
    cut = sum(truncated.values())
    if not cut:
        return
    longest = max(len(c) + len(k) - 1 for c, k in requests)
    fits = _max_shots_that_fit(tasks, n, args.seed, args.shots, encode, limit, max(len(k) for _, k in requests))
    fix = (f"--shots {fits} (the most that fits every prompt)" if fits is not None
           else "shorter prompts") + " or a model with a longer context"
    print(f"WARNING: {cut} of {len(examples)} prompts are longer than the model's context of {limit} tokens "
          f"(longest input {longest}) and are cut from the left, so the model sees fewer than the {args.shots} "
          f"shots asked for and the accuracies are not {args.shots}-shot numbers. Fix: {fix}.", file=sys.stderr)


def _estimate(scorer, examples, requests, device: str) -> tuple[list[list[float]], int]:
    """Score the first few prompts, print what the whole evaluation will cost, return their scores."""
    k = min(len(examples), 8)
    m = sum(len(ex.choices) for ex in examples[:k])
    t0 = time.perf_counter()
    first = scorer.score(examples[:k], requests[:m])
    dt = time.perf_counter() - t0
    tokens = sum(len(c) for c, _ in requests)
    first_tokens = sum(len(c) for c, _ in requests[:m])
    est = dt * tokens / max(first_tokens, 1)
    print(f"eval: {len(examples):,} prompts x {len(requests) / len(examples):.1f} choices = {len(requests):,} "
          f"choices, {tokens / len(requests):.0f} tokens per prompt; estimated {est:.0f} s on {device} "
          f"(timed on the first {k} prompts){'' if est < 120 else '; --quick for a cheaper first look'}",
          file=sys.stderr)
    return first, m


def _check_args(args) -> None:
    """Everything about the command line that can be wrong, before a model is loaded and the
    tasks are scored: a typo in --heldout or --json must not cost the whole evaluation."""
    from grow_megatron.config.base import check_output_dir

    for flag in ("batch_size", "seq_length", "max_chunks"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ConfigError("--" + flag.replace("_", "-"), v, "must be a positive integer")
    for path in args.heldout:
        if not Path(path).is_file():
            why = "is a directory" if Path(path).is_dir() else "no such file"
            raise ConfigError("--heldout", path, f"{why}: give a plain-text or .jsonl file")
    if args.json and args.json != "-":
        if Path(args.json).is_dir():
            raise ConfigError("--json", args.json, "is a directory: give a file path, e.g. eval.json")
        check_output_dir(str(Path(args.json).parent), "--json")
    if args.export_lm_eval:
        check_output_dir(args.export_lm_eval, "--export-lm-eval")
    if args.config and not Path(args.config).is_file():
        raise ConfigError("--config", args.config, "no such file (give the run's config.yaml)")
    check_loop_arg(args.loop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tasks = [] if args.tasks == "none" else P.parse_tasks(args.tasks)
    n = args.n if args.n is not None else (QUICK_N if args.quick else DEFAULT_N)
    if n < 1:
        raise ConfigError("--n", n, "must be >= 1 (examples per task)")
    if args.quick and args.max_chunks is None:
        args.max_chunks = QUICK_CHUNKS
    _check_args(args)
    cfg = P.PrimitivesConfig(num_shots=args.shots).validate()
    result: dict[str, Any] = {"template_version": P.TEMPLATE_VERSION, "seed": args.seed, "n": n,
                              "shots": args.shots, "quick": args.quick}

    if args.export_lm_eval:
        from grow_megatron.eval.lm_eval_adapter import export_tasks, lm_eval_command

        written = export_tasks(args.export_lm_eval, tasks, n=n, seed=args.seed, config=cfg)
        print(f"wrote {len(written)} files to {args.export_lm_eval}; run e.g.:")
        print(lm_eval_command(args.model or "HF_DIR", args.export_lm_eval))
        if not args.model:
            return 0
    if not args.model:
        raise ConfigError("MODEL", None, "give a model directory (or --export-lm-eval DIR alone)")

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError("--device", device, "is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", device, "no CUDA GPU is available here: use --device cpu (or auto)")
    from grow_megatron.convert.load import load_model

    loaded = load_model(args.model, device, args.dtype, accept="causal-lm", need_tokenizer=True, config=args.config)
    model, tokenizer = loaded.model, loaded.tokenizer
    result["model"] = args.model
    result["context_length"] = S.context_length(model)
    ctx = S.context_length(model) or 2048
    if args.seq_length and args.seq_length > ctx:
        raise ConfigError("--seq-length", args.seq_length, f"exceeds the model's context of {ctx} tokens: "
                                                           f"use --seq-length {ctx} or less")
    if args.loop:
        from grow_megatron.convert.looping import apply_loop_arg

        apply_loop_arg(model, args.loop)
    result["loop"] = args.loop

    if tasks:
        scorer = S.hf_scorer(model, tokenizer, batch_size=args.batch_size, add_bos=args.add_bos,
                             progress=sys.stderr.isatty())
        examples = [ex for t in tasks for ex in P.generate(t, n, args.seed, cfg)]
        t0 = time.perf_counter()
        requests = scorer.requests(examples)
        truncated = S.truncated_prompts(examples, requests, scorer.max_length)
        _warn_truncation(truncated, examples, requests, scorer.max_length, args, tasks, n, scorer.encode)
        first, m = _estimate(scorer, examples, requests, device)
        k = len(first)
        scores = first + (scorer.score(examples[k:], requests[m:]) if k < len(examples) else [])
        mc = S.results_from_scores(scores, examples, truncated)
        _print_mc(mc)
        result["primitives"] = {t: r.to_dict() for t, r in mc.items()}
        if len(mc) > 1:
            result["primitives_mean"] = S.mean_result(mc)
        result["truncated_prompts"] = sum(truncated.values())
        result["primitives_seconds"] = time.perf_counter() - t0

    if args.heldout:
        seq = args.seq_length or min(2048, ctx)
        fn = S.hf_logits_fn(model)
        result["heldout"] = {}
        for path in args.heldout:
            # One extra token per row: T inputs predict T targets at context length `seq`.
            batches = S.chunk_tokens(read_heldout_ids(path, tokenizer), seq + 1, args.batch_size, args.max_chunks)
            if not batches:
                raise ConfigError("--heldout", path, f"has fewer than {seq + 1} tokens: give more text or a smaller --seq-length")
            r = S.heldout_nll(fn, batches, device=device, vocab_size=len(tokenizer))
            se = f"{r.stderr:.4f}" if r.windows > 1 else "n/a"
            print(f"held-out {path}: NLL {r.nll:.4f} ± {se} nats/token (se over {r.windows} windows of "
                  f"{seq} tokens; {r.tokens:,} tokens; ppl {r.perplexity:.2f}; uniform guess {r.chance:.2f})")
            result["heldout"][path] = r.to_dict() | {"seq_length": seq}

    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
