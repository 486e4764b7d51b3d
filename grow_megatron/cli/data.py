"""`grow-megatron data ...`: prepare indexed datasets, train tokenizers, inspect what was built.

  grow-megatron data prepare SOURCE --out PREFIX [--tokenizer T] [--text-field F] [--workers N]
  grow-megatron data prepare --config RUN.yaml        (every raw dataset of the run's data: section)
  grow-megatron data train-tokenizer SOURCE... --vocab-size N --out DIR [--sample-chars C]
  grow-megatron data inspect PREFIX [--samples K]
  grow-megatron data make-default-corpus [--out DIR]  (regenerate the embedded corpus + tokenizer)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from grow_megatron.config.base import ConfigError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="grow-megatron data", description="Prepare tokenizers and megatron indexed datasets.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prepare", help="tokenize a raw source into PREFIX.bin/.idx (+ manifest); a no-op when up to date")
    p.add_argument("source", nargs="?", help="a .jsonl/.json/.parquet/.arrow/.txt/.md file (optionally compressed), "
                   "a directory of such files, or a datasets.save_to_disk directory")
    p.add_argument("--out", help="output prefix: writes OUT.bin, OUT.idx, OUT.tokenizer.json, OUT.manifest.json")
    p.add_argument("--config", help="a run YAML: prepare every raw dataset of its data: section into the cache")
    p.add_argument("--tokenizer", help="tokenizer.json or HF tokenizer directory (default: the embedded one)")
    p.add_argument("--eod-token", help="end-of-document token (default: the tokenizer's eos token)")
    p.add_argument("--text-field", default="text", help="column holding the text (default: text)")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="tokenizer processes")
    p.add_argument("--force", action="store_true", help="rebuild even if the manifest says it is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("train-tokenizer", help="train a byte-level BPE on a sample of raw sources")
    t.add_argument("sources", nargs="+")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="directory: tokenizer.json, tokenizer_config.json, special_tokens_map.json")
    t.add_argument("--sample-chars", type=int, default=50_000_000, help="characters of text to train on (spread over the sources)")
    t.add_argument("--text-field", default="text")
    t.add_argument("--eod-token", default="<|endoftext|>")

    i = sub.add_parser("inspect", help="print a prepared dataset's manifest and decode a few documents")
    i.add_argument("prefix")
    i.add_argument("--samples", type=int, default=2)
    i.add_argument("--chars", type=int, default=300)

    m = sub.add_parser("make-default-corpus", help="regenerate the embedded corpus and its tokenizer")
    m.add_argument("--out", help="directory (default: the package's assets directory)")
    m.add_argument("--vocab-size", type=int, default=4096)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"prepare": _prepare, "train-tokenizer": _train, "inspect": _inspect,
            "make-default-corpus": _make_default}[args.cmd](args)


def _prepare(args) -> int:
    from grow_megatron.data.prepare import prepare
    from grow_megatron.data.tokenizer import load_tokenizer

    if args.config:
        if args.source or args.out:
            raise ConfigError("--config", args.config, "prepares the run's own datasets: give no SOURCE/--out with it")
        return _prepare_config(args)
    if not args.source:
        raise ConfigError("SOURCE", None, "missing: give a file or directory to tokenize (or --config RUN.yaml)")
    if not args.out:
        raise ConfigError("--out", None, "missing: give the output prefix, e.g. --out data/mycorpus "
                                         "(writes data/mycorpus.bin/.idx)")
    if args.workers < 1:
        raise ConfigError("--workers", args.workers, "must be >= 1")
    out = args.out[:-4] if args.out.endswith((".bin", ".idx")) else args.out
    if os.path.isdir(out):
        raise ConfigError("--out", args.out, "is a directory: give a file prefix inside it, e.g. "
                                             f"{os.path.join(args.out, 'data')} (writes data.bin/.idx there)")
    _writable_dir(os.path.dirname(os.path.abspath(out)), "--out", args.out)
    tok = load_tokenizer(args.tokenizer, eod_token=args.eod_token, field="--tokenizer")
    m = prepare(args.source, out, tok, text_field=args.text_field, num_workers=args.workers,
                progress=not args.no_progress, force=args.force, field="SOURCE", text_field_path="--text-field")
    _report(m)
    return 0


def _writable_dir(path: str, field: str, value: str) -> None:
    """Create `path` if needed and check it is writable, before any tokenizing is spent on it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ConfigError(field, value, f"cannot create directory {path} ({err.strerror}): choose a writable path") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(field, value, f"directory {path} is not writable: choose a writable path")


def _report(m: dict, state: str | None = None) -> None:
    state = state or ("up to date (nothing to do)" if m.get("skipped") else f"built in {m['seconds']:.1f}s")
    print(f"{m['prefix']}: {m['documents']} documents, {m['tokens']} tokens ({m['dtype']}), "
          f"tokenizer {m['tokenizer']['sha256'][:12]} vocab {m['tokenizer']['vocab_size']}: {state}")


def _prepare_config(args) -> int:
    from grow_megatron.config.base import from_dict
    from grow_megatron.data.datasets import build_tokenizer, resolve_datasets
    from grow_megatron.data.prepare import read_manifest

    from grow_megatron.config.model import ModelConfig
    from grow_megatron.config.run import RunConfig, read_yaml

    raw = read_yaml(args.config, "--config")
    # Map the whole file, not just data:, so that a typo in a section name (`dat:`) is an
    # error here instead of silently preparing the default corpus.
    model = raw.get("model") or {}
    raw["model"] = ModelConfig.from_preset_dict(dict(model)) if isinstance(model, dict) else model
    cfg = from_dict(RunConfig, raw).data.validate()
    if args.workers:
        cfg.num_workers = args.workers
    tok = build_tokenizer(cfg)
    for prefix, w, name in resolve_datasets(cfg, tok, progress=not args.no_progress):
        m = read_manifest(prefix)
        if m:
            _report(m, f"ready (built {m['created']})")
        else:
            print(f"{prefix}: prebuilt indexed dataset (no manifest)")
    return 0


def _train(args) -> int:
    from grow_megatron.data.readers import first_chars, iter_texts, list_source_files
    from grow_megatron.data.tokenizer import train_bpe_tokenizer

    if args.vocab_size < 300:
        raise ConfigError("--vocab-size", args.vocab_size, "must be at least 300 (256 byte tokens + merges + specials)")
    if args.sample_chars < 1:
        raise ConfigError("--sample-chars", args.sample_chars, "must be >= 1 (characters of text to train on)")
    for s in args.sources:
        list_source_files(s, "SOURCE")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError("--out", args.out, "is a file: give a directory for tokenizer.json and its config files")
    _writable_dir(args.out, "--out", args.out)
    per = args.sample_chars // len(args.sources)

    def sample():
        for s in args.sources:
            yield from first_chars(iter_texts(s, args.text_field, field="--text-field", source_field="SOURCE"), per)

    tok = train_bpe_tokenizer(sample(), vocab_size=args.vocab_size, eod_token=args.eod_token)
    files = tok.save(args.out)
    print(f"trained BPE vocab {tok.vocab_size} (eod {args.eod_token!r} = {tok.eod}), sha {tok.sha256[:12]}: {', '.join(files)}")
    return 0


def _inspect(args) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from grow_megatron.data.prepare import is_complete, read_manifest
    from grow_megatron.data.tokenizer import load_tokenizer

    prefix = args.prefix[:-4] if args.prefix.endswith((".bin", ".idx")) else args.prefix
    if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
        raise ConfigError("PREFIX", prefix, "has no .bin/.idx pair")
    m = read_manifest(prefix)
    if m:
        print(json.dumps({k: v for k, v in m.items() if k != "files"}, indent=2))
        print(f"complete: {is_complete(prefix, m)}; source files: {len(m['files'])}")
    else:
        print("no grow_megatron manifest (e.g. made by Megatron-LM's tools)")
    ds = IndexedDataset(prefix, mmap=True)
    print(f"documents: {len(ds)}, tokens: {int(ds.sequence_lengths.sum())}")
    tok = None
    if m and os.path.isfile(m["tokenizer"].get("copy", "")):
        tok = load_tokenizer(m["tokenizer"]["copy"])
    for k in range(min(args.samples, len(ds))):
        ids = ds[k]
        text = tok.detokenize(ids)[: args.chars] if tok else str(ids[:32].tolist())
        print(f"--- document {k} ({len(ids)} tokens) ---\n{text}")
    return 0


def _make_default(args) -> int:
    from grow_megatron.data.corpus import make_default_corpus

    corpus, tok = make_default_corpus(args.out, vocab_size=args.vocab_size)
    print(f"wrote {corpus} ({os.path.getsize(corpus)} bytes) and {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
