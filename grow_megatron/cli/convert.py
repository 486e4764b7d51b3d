"""`grow-megatron convert`: checkpoints to and from Hugging Face Llama.

    grow-megatron convert to-hf CKPT OUT_DIR        CKPT: a checkpoint dir or a run dir (its latest)
    grow-megatron convert from-hf HF_DIR RUN_DIR    then: grow-megatron train RUN_DIR/config.yaml
    grow-megatron convert check CKPT [HF_DIR] [--text FILE]   max |native - HF| logits (fp32)

See docs/convert.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from grow_megatron.cli import known_warnings_quiet
from grow_megatron.cli.flags import add_flags, cli, options_from_args
from grow_megatron.config.base import ConfigError, check_output_dir
from grow_megatron.config.options import check_positive


@dataclass
class ToHfOptions:
    """`convert to-hf`: native checkpoint -> transformers LlamaForCausalLM directory."""

    ckpt: str = field(metadata=cli(positional=True))
    """checkpoint directory (…/checkpoints/step_N) or run directory (its latest)"""
    out_dir: str = field(metadata=cli(positional=True))
    """the Hugging Face directory to write"""
    config: str | None = None
    """the run's config.yaml (default: RUN_DIR/config.yaml)"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """weights dtype (auto: the checkpoint's model dtype, fp32 with --main-params)"""
    main_params: bool = False
    """export the optimizer's fp32 main copy instead of the model weights (bf16 runs)"""
    no_tokenizer: bool = False
    """do not write the run's tokenizer files"""
    force: bool = False
    """overwrite an existing, non-empty OUT_DIR"""
    no_progress: bool = False
    """no progress bar"""

    def validate(self) -> None:
        check_output_dir(self.out_dir, "OUT_DIR")


@dataclass
class FromHfOptions:
    """`convert from-hf`: HF Llama directory -> run directory with a step-0 checkpoint."""

    hf_dir: str = field(metadata=cli(positional=True))
    """the Hugging Face Llama directory to read"""
    out_dir: str = field(metadata=cli(positional=True))
    """new run directory: config.yaml, checkpoints/step_00000000, tokenizer/"""
    ln_scaling: bool = False
    """continue with LN-Scaling: unfold the norm gains by sqrt(l) (for models exported from an LN-Scaling run)"""
    seq_length: int | None = None
    """training context (default: max_position_embeddings)"""
    name: str | None = None
    """run name (default: the HF directory's name)"""
    no_progress: bool = False
    """no progress bar"""

    def validate(self) -> None:
        check_output_dir(self.out_dir, "RUN_DIR")
        if self.seq_length is not None and self.seq_length < 1:
            raise ConfigError(
                "--seq-length",
                self.seq_length,
                "must be a positive integer (or leave it out for the HF config's max_position_embeddings)",
            )


@dataclass
class CheckOptions:
    """`convert check`: logit parity of a native checkpoint and its (in-memory or given) export."""

    ckpt: str = field(metadata=cli(positional=True))
    """checkpoint directory or run directory (its latest)"""
    hf_dir: str | None = field(default=None, metadata=cli(positional=True))
    """its Hugging Face export (default: converted in memory)"""
    config: str | None = None
    """the run's config.yaml (default: RUN_DIR/config.yaml)"""
    tol: float = 1e-4
    """largest allowed max |native - HF| logit difference"""
    text: str | None = field(default=None, metadata=cli(metavar="FILE"))
    """compare on this text (the run's tokenizer, up to --max-rows windows of the run's context) instead of 2 x 16
    random tokens"""
    max_rows: int = 4
    """with --text: at most this many windows"""

    def validate(self) -> None:
        if not self.tol > 0:
            raise ConfigError("--tol", self.tol, "must be > 0")
        check_positive(self, "max_rows")


VERBS = {"to-hf": ToHfOptions, "from-hf": FromHfOptions, "check": CheckOptions}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="grow-megatron convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for verb, cls in VERBS.items():
        add_flags(sub.add_parser(verb, help=cls.__doc__.split(": ", 1)[1].rstrip(".")), cls)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Also run without the dispatcher, as tools/convert.py.
    with known_warnings_quiet():
        return _run(args.cmd, options_from_args(VERBS[args.cmd], args))


def _run(cmd: str, opts) -> int:
    # Imported once the arguments are known to be good: torch takes seconds to import, which
    # --help and a mistyped argument should not cost.
    from grow_megatron import convert
    from grow_megatron.convert.api import text_tokens
    from grow_megatron.convert.load import check_model_dir

    if cmd == "to-hf":
        out = convert.to_hf(
            opts.ckpt,
            opts.out_dir,
            config=opts.config,
            dtype=opts.dtype,
            main_params=opts.main_params,
            tokenizer=not opts.no_tokenizer,
            progress=not opts.no_progress,
            force=opts.force,
        )
        for left in out["removed_leftovers"]:
            print(
                f"note: an earlier export to {opts.out_dir} did not finish (killed?); removed its incomplete "
                f"output {left}",
                file=sys.stderr,
            )
        print(
            f"wrote {out['out_dir']}: LlamaForCausalLM, {out['depth']} layers, {out['params']:,} parameters, "
            f"{out['dtype'].replace('torch.', '')}"
            + (", LN-Scaling folded into the norm gains" if out["ln_scaling_folded"] else "")
            + f" ({out['seconds']:.1f}s)"
        )
        return 0
    if cmd == "from-hf":
        out = convert.from_hf(
            opts.hf_dir,
            opts.out_dir,
            ln_scaling=opts.ln_scaling,
            seq_length=opts.seq_length,
            name=opts.name,
            progress=not opts.no_progress,
        )
        print(f"wrote {out['checkpoint']} ({out['depth']} layers, fresh optimizer, step 0) and {out['config']}")
        if not out["tokenizer"]:
            print("note: the HF directory has no tokenizer.json; set data.tokenizer in the config", file=sys.stderr)
        print(f"continue training with: grow-megatron train {out['config']} --set train.steps=N")
        return 0
    tokens = text_tokens(opts.ckpt, opts.text, config=opts.config, max_rows=opts.max_rows) if opts.text else None
    if opts.hf_dir:
        check_model_dir(opts.hf_dir, "llama", field="HF_DIR")
    diff = convert.compare_logits(opts.ckpt, opts.hf_dir, config=opts.config, tokens=tokens)
    ok = diff < opts.tol
    where = {"text": opts.text} if opts.text else {"random_tokens": True}
    print(
        json.dumps(
            {
                "max_abs_logit_diff": diff,
                "tol": opts.tol,
                "ok": ok,
                "tokens": list(tokens.shape) if tokens is not None else [2, 16],
            }
            | where
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
