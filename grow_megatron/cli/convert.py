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
import warnings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grow-megatron convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("to-hf", help="native checkpoint -> transformers LlamaForCausalLM directory")
    t.add_argument("ckpt", help="checkpoint directory (…/checkpoints/step_N) or run directory (its latest)")
    t.add_argument("out_dir")
    t.add_argument("--config", help="the run's config.yaml (default: RUN_DIR/config.yaml)")
    t.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype (auto: the checkpoint's model dtype, fp32 with --main-params)")
    t.add_argument("--main-params", action="store_true",
                   help="export the optimizer's fp32 main copy instead of the model weights (bf16 runs)")
    t.add_argument("--no-tokenizer", action="store_true", help="do not write the run's tokenizer files")
    t.add_argument("--force", action="store_true", help="overwrite an existing, non-empty OUT_DIR")
    f = sub.add_parser("from-hf", help="HF Llama directory -> run directory with a step-0 checkpoint")
    f.add_argument("hf_dir")
    f.add_argument("out_dir", help="new run directory: config.yaml, checkpoints/step_00000000, tokenizer/")
    f.add_argument("--ln-scaling", action="store_true",
                   help="continue with LN-Scaling: unfold the norm gains by sqrt(l) (for models exported "
                        "from an LN-Scaling run)")
    f.add_argument("--seq-length", type=int, help="training context (default: max_position_embeddings)")
    f.add_argument("--name", help="run name (default: the HF directory's name)")
    c = sub.add_parser("check", help="logit parity of a native checkpoint and its (in-memory or given) export")
    c.add_argument("ckpt")
    c.add_argument("hf_dir", nargs="?")
    c.add_argument("--config")
    c.add_argument("--tol", type=float, default=1e-4)
    c.add_argument("--text", metavar="FILE", help="compare on this text (the run's tokenizer, up to --max-rows "
                                                  "windows of the run's context) instead of 2 x 16 random tokens")
    c.add_argument("--max-rows", type=int, default=4, help="with --text: at most this many windows")
    for s in (t, f):
        s.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for pat in ("Transformer Engine and Apex are not installed", ".*is deprecated.*", ".*torch.distributed.*"):
        warnings.filterwarnings("ignore", message=pat)
    from grow_megatron import convert
    from grow_megatron.config.base import ConfigError, check_output_dir

    if args.cmd in ("to-hf", "from-hf"):
        check_output_dir(args.out_dir, "OUT_DIR" if args.cmd == "to-hf" else "RUN_DIR")
    if args.cmd == "from-hf" and args.seq_length is not None and args.seq_length < 1:
        raise ConfigError("--seq-length", args.seq_length, "must be a positive integer (or leave it out for the HF "
                                                           "config's max_position_embeddings)")
    if args.cmd == "check" and not args.tol > 0:
        raise ConfigError("--tol", args.tol, "must be > 0")
    if args.cmd == "to-hf":
        out = convert.to_hf(args.ckpt, args.out_dir, config=args.config, dtype=args.dtype,
                            main_params=args.main_params, tokenizer=not args.no_tokenizer,
                            progress=not args.no_progress, force=args.force)
        print(f"wrote {out['out_dir']}: LlamaForCausalLM, {out['depth']} layers, {out['params']:,} parameters, "
              f"{out['dtype'].replace('torch.', '')}" + (", LN-Scaling folded into the norm gains" if out["ln_scaling_folded"] else "")
              + f" ({out['seconds']:.1f}s)")
        return 0
    if args.cmd == "from-hf":
        out = convert.from_hf(args.hf_dir, args.out_dir, ln_scaling=args.ln_scaling, seq_length=args.seq_length,
                              name=args.name, progress=not args.no_progress)
        print(f"wrote {out['checkpoint']} ({out['depth']} layers, fresh optimizer, step 0) and {out['config']}")
        if not out["tokenizer"]:
            print("note: the HF directory has no tokenizer.json; set data.tokenizer in the config", file=sys.stderr)
        print(f"continue training with: grow-megatron train {out['config']} --set train.steps=N")
        return 0
    if args.max_rows < 1:
        raise ConfigError("--max-rows", args.max_rows, "must be a positive integer")
    tokens = None
    if args.text:
        from grow_megatron.convert.api import text_tokens

        tokens = text_tokens(args.ckpt, args.text, config=args.config, max_rows=args.max_rows)
    if args.hf_dir:
        from grow_megatron.convert.load import check_model_dir

        check_model_dir(args.hf_dir, "llama", field="HF_DIR")
    diff = convert.compare_logits(args.ckpt, args.hf_dir, config=args.config, tokens=tokens)
    ok = diff < args.tol
    where = {"text": args.text} if args.text else {"random_tokens": True}
    print(json.dumps({"max_abs_logit_diff": diff, "tol": args.tol, "ok": ok, "tokens": list(tokens.shape) if
                      tokens is not None else [2, 16]} | where))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
