"""`grow-megatron eval`: reasoning primitives (docs/method.md §8) and held-out NLL of a model.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from grow_megatron.cli.flags import cli, command_parser, options_from_args
from grow_megatron.config.base import ConfigError, check_output_dir
from grow_megatron.config.loop import check_loop_arg
from grow_megatron.config.options import check_positive
from grow_megatron.config.rundir import CONFIG
from grow_megatron.convert.load import check_model_dir, load_model
from grow_megatron.convert.looping import apply_loop_arg
from grow_megatron.eval import primitives, scoring
from grow_megatron.eval.evaluate import (
    DEFAULT_N,
    QUICK_CHUNKS,
    QUICK_N,
    evaluate_heldout,
    evaluate_primitives,
    format_mc,
)
from grow_megatron.eval.lm_eval_adapter import LM_EVAL_INSTALL, export_tasks, lm_eval_command


@dataclass
class EvalOptions:
    """Options of `grow-megatron eval`."""

    model: str | None = field(default=None, metadata=cli(positional=True))
    """HF model directory (or a native checkpoint, via grow_megatron.convert)"""
    tasks: str = "paper"
    """'paper' (Table 6's five), 'all', 'none', or a comma list of: copying_letters, copying_random, copying_words,
    varassign_basic, varassign_code, varassign_math"""
    n: int | None = None
    """examples per task (default 200; 50 with --quick)"""
    quick: bool = False
    """a cheap first look: 50 examples per task and at most 32 held-out windows per file (standard errors are
    about twice those of the defaults)"""
    seed: int = 0
    """generator seed"""
    shots: int = 5
    """solved examples before each query"""
    heldout: list[str] = field(default_factory=list, metadata=cli(append=True, metavar="FILE"))
    """held-out text for NLL: plain text (one stream) or .jsonl with a 'text' field per document (documents
    joined with EOS); repeatable"""
    seq_length: int | None = None
    """NLL context length (default: min(2048, the model's))"""
    max_chunks: int | None = None
    """at most this many NLL sequences per file"""
    batch_size: int = 16
    """(context, choice) rows or NLL sequences per forward pass"""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', ..."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the model is loaded in"""
    add_bos: bool = False
    """prepend the BOS token to every MC context"""
    config: str | None = None
    """a native checkpoint's run config.yaml, when the checkpoint was copied out of its run directory (default:
    RUN_DIR/config.yaml)"""
    json: str | None = field(default=None, metadata=cli(metavar="PATH"))
    """write results as JSON ('-' for stdout)"""
    loop: str | None = field(default=None, metadata=cli(metavar="SPEC"))
    """loop a block at inference: START:ENDxR applies layers START..END-1 (0-indexed) R times in a row with the
    same weights, e.g. 12:16x3 (docs/looping.md)"""
    export_lm_eval: str | None = field(default=None, metadata=cli(metavar="DIR"))
    """write the tasks as lm-evaluation-harness jsonl + yaml into DIR (see docs/eval.md)"""

    def validate(self) -> None:
        """Everything about the command line that can be wrong, before a model is loaded and the
        tasks are scored: a typo in --heldout or --json must not cost the whole evaluation."""
        n = self.examples_per_task
        if n < 1:
            raise ConfigError("--n", n, "must be >= 1 (examples per task)")
        check_positive(self, "batch_size", "seq_length", "max_chunks")
        for path in self.heldout:
            if not Path(path).is_file():
                why = "is a directory" if Path(path).is_dir() else "no such file"
                raise ConfigError("--heldout", path, f"{why}: give a plain-text or .jsonl file")
        if self.json and self.json != "-":
            if Path(self.json).is_dir():
                raise ConfigError("--json", self.json, "is a directory: give a file path, e.g. eval.json")
            check_output_dir(str(Path(self.json).parent), "--json")
        if self.export_lm_eval:
            check_output_dir(self.export_lm_eval, "--export-lm-eval")
        if self.config and not Path(self.config).is_file():
            raise ConfigError("--config", self.config, f"no such file (give the run's {CONFIG})")
        check_loop_arg(self.loop)

    @property
    def examples_per_task(self) -> int:
        return self.n if self.n is not None else (QUICK_N if self.quick else DEFAULT_N)

    @property
    def chunks(self) -> int | None:
        return QUICK_CHUNKS if self.quick and self.max_chunks is None else self.max_chunks


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron eval", __doc__, EvalOptions)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tasks = [] if args.tasks == "none" else primitives.parse_tasks(args.tasks)
    opts = options_from_args(EvalOptions, args)
    n = opts.examples_per_task
    cfg = primitives.PrimitivesConfig(num_shots=opts.shots).validate()
    result: dict[str, Any] = {
        "template_version": primitives.TEMPLATE_VERSION,
        "seed": opts.seed,
        "n": n,
        "shots": opts.shots,
        "quick": opts.quick,
    }

    device = ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
    if opts.export_lm_eval:
        written = export_tasks(opts.export_lm_eval, tasks, n=n, seed=opts.seed, config=cfg)
        print(
            f"wrote {len(written)} files to {opts.export_lm_eval}; score them with lm-evaluation-harness "
            f"({LM_EVAL_INSTALL}), e.g.:"
        )
        hf_dir = opts.model or "HF_DIR"
        if opts.model and check_model_dir(opts.model, "causal-lm") is None:
            # lm-eval reads a Hugging Face directory: a native checkpoint is exported first.
            hf_dir = f"{opts.model.rstrip('/')}-hf"
            print(f"grow-megatron convert to-hf {opts.model} {hf_dir}")
        print(
            lm_eval_command(
                hf_dir,
                opts.export_lm_eval,
                batch_size=opts.batch_size,
                dtype=opts.dtype,
                device=device,
                add_bos=opts.add_bos,
            )
        )
        if not opts.model:
            return 0
    if not opts.model:
        raise ConfigError("MODEL", None, "give a model directory (or --export-lm-eval DIR alone)")

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError("--device", device, "is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", device, "no CUDA GPU is available here: use --device cpu (or auto)")

    loaded = load_model(opts.model, device, opts.dtype, accept="causal-lm", need_tokenizer=True, config=opts.config)
    model, tokenizer = loaded.model, loaded.tokenizer
    result["model"] = opts.model
    result["context_length"] = scoring.context_length(model)
    ctx = scoring.context_length(model) or 2048
    if opts.seq_length and opts.seq_length > ctx:
        raise ConfigError(
            "--seq-length",
            opts.seq_length,
            f"exceeds the model's context of {ctx} tokens: use --seq-length {ctx} or less",
        )
    if opts.loop:
        apply_loop_arg(model, opts.loop)
    result["loop"] = opts.loop

    if tasks:
        mc, cut, seconds = evaluate_primitives(
            model, tokenizer, tasks, n, opts.seed, opts.shots, opts.batch_size, opts.add_bos, device
        )
        print(format_mc(mc))
        result["primitives"] = {t: r.to_dict() for t, r in mc.items()}
        if len(mc) > 1:
            result["primitives_mean"] = scoring.mean_result(mc)
        result["truncated_prompts"] = cut
        result["primitives_seconds"] = seconds

    if opts.heldout:
        seq = opts.seq_length or min(2048, ctx)
        result["heldout"] = {}
        for path in opts.heldout:
            r = evaluate_heldout(model, tokenizer, path, seq, opts.batch_size, opts.chunks, device)
            se = f"{r.stderr:.4f}" if r.windows > 1 else "n/a"
            print(
                f"held-out {path}: NLL {r.nll:.4f} ± {se} nats/token (se over {r.windows} windows of "
                f"{seq} tokens; {r.tokens:,} tokens; ppl {r.perplexity:.2f}; uniform guess {r.chance:.2f})"
            )
            result["heldout"][path] = r.to_dict() | {"seq_length": seq}

    if opts.json:
        text = json.dumps(result, indent=2)
        if opts.json == "-":
            print(text)
        else:
            Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
            Path(opts.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
