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
from dataclasses import dataclass, field

from grow_megatron.cli.flags import add_flags, cli, options_from_args
from grow_megatron.config.base import ConfigError, from_dict
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import RunConfig, read_yaml
from grow_megatron.data.prepare import is_complete, prepare, read_manifest
from grow_megatron.data.readers import first_chars, iter_texts, list_source_files


@dataclass
class DataPrepareOptions:
    """tokenize a raw source into PREFIX.bin/.idx (+ manifest); a no-op when up to date"""

    source: str | None = field(default=None, metadata=cli(positional=True))
    """a .jsonl/.json/.parquet/.arrow/.txt/.md file (optionally compressed), a directory of such files, or a
    datasets.save_to_disk directory"""
    out: str | None = None
    """output prefix: writes OUT.bin, OUT.idx, OUT.tokenizer.json, OUT.manifest.json"""
    config: str | None = None
    """a run YAML: prepare every raw dataset of its data: section into the cache"""
    tokenizer: str | None = None
    """tokenizer.json or HF tokenizer directory (default: the embedded one)"""
    eod_token: str | None = None
    """end-of-document token (default: the tokenizer's eos token)"""
    text_field: str = "text"
    """column holding the text (default: text)"""
    workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))
    """tokenizer processes (default: the CPU count, at most 8)"""
    force: bool = False
    """rebuild even if the manifest says it is up to date"""
    no_progress: bool = False
    """no progress bar"""


@dataclass
class TrainTokenizerOptions:
    """train a byte-level BPE on a sample of raw sources"""

    sources: list[str] = field(metadata=cli(positional=True, nargs="+"))
    """raw sources, as for `data prepare`"""
    vocab_size: int
    """vocabulary size, at least 300 (256 byte tokens + merges + specials)"""
    out: str
    """directory: tokenizer.json, tokenizer_config.json, special_tokens_map.json"""
    sample_chars: int = 50_000_000
    """characters of text to train on (spread over the sources)"""
    text_field: str = "text"
    """column holding the text"""
    eod_token: str = "<|endoftext|>"
    """end-of-document token"""


@dataclass
class InspectOptions:
    """print a prepared dataset's manifest and decode a few documents"""

    prefix: str = field(metadata=cli(positional=True))
    """the dataset's prefix (PREFIX.bin / PREFIX.idx)"""
    samples: int = 2
    """documents to decode"""
    chars: int = 300
    """characters of each decoded document to print"""


@dataclass
class MakeCorpusOptions:
    """regenerate the embedded corpus and its tokenizer"""

    out: str | None = None
    """directory (default: the package's assets directory)"""
    vocab_size: int = 4096
    """vocabulary size of the tokenizer"""


VERBS = {
    "prepare": DataPrepareOptions,
    "train-tokenizer": TrainTokenizerOptions,
    "inspect": InspectOptions,
    "make-default-corpus": MakeCorpusOptions,
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="grow-megatron data", description="Prepare tokenizers and megatron indexed datasets."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    for verb, cls in VERBS.items():
        add_flags(sub.add_parser(verb, help=cls.__doc__), cls)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = options_from_args(VERBS[args.cmd], args)
    return {"prepare": _prepare, "train-tokenizer": _train, "inspect": _inspect, "make-default-corpus": _make_default}[
        args.cmd
    ](opts)


def _prepare(opts) -> int:
    # megatron-core (ten seconds) comes with the tokenizer: not for --help or a bad argument.
    from grow_megatron.data.tokenizer import load_tokenizer

    if opts.config:
        if opts.source or opts.out:
            raise ConfigError("--config", opts.config, "prepares the run's own datasets: give no SOURCE/--out with it")
        return _prepare_config(opts)
    if not opts.source:
        raise ConfigError("SOURCE", None, "missing: give a file or directory to tokenize (or --config RUN.yaml)")
    if not opts.out:
        raise ConfigError(
            "--out", None, "missing: give the output prefix, e.g. --out data/mycorpus (writes data/mycorpus.bin/.idx)"
        )
    if opts.workers < 1:
        raise ConfigError("--workers", opts.workers, "must be >= 1")
    out = opts.out[:-4] if opts.out.endswith((".bin", ".idx")) else opts.out
    if os.path.isdir(out):
        raise ConfigError(
            "--out",
            opts.out,
            "is a directory: give a file prefix inside it, e.g. "
            f"{os.path.join(opts.out, 'data')} (writes data.bin/.idx there)",
        )
    _writable_dir(os.path.dirname(os.path.abspath(out)), "--out", opts.out)
    tok = load_tokenizer(opts.tokenizer, eod_token=opts.eod_token, field="--tokenizer")
    m = prepare(
        opts.source,
        out,
        tok,
        text_field=opts.text_field,
        num_workers=opts.workers,
        progress=not opts.no_progress,
        force=opts.force,
        field="SOURCE",
        text_field_path="--text-field",
    )
    _report(m)
    return 0


def _writable_dir(path: str, field: str, value: str) -> None:
    """Create `path` if needed and check it is writable, before any tokenizing is spent on it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            field, value, f"cannot create directory {path} ({err.strerror}): choose a writable path"
        ) from None
    if not os.access(path, os.W_OK):
        raise ConfigError(field, value, f"directory {path} is not writable: choose a writable path")


def _report(m: dict, state: str | None = None) -> None:
    state = state or ("up to date (nothing to do)" if m.get("skipped") else f"built in {m['seconds']:.1f}s")
    print(
        f"{m['prefix']}: {m['documents']} documents, {m['tokens']} tokens ({m['dtype']}), "
        f"tokenizer {m['tokenizer']['sha256'][:12]} vocab {m['tokenizer']['vocab_size']}: {state}"
    )


def _prepare_config(opts) -> int:
    from grow_megatron.data.datasets import build_tokenizer, resolve_datasets  # megatron-core, as above

    raw = read_yaml(opts.config, "--config")
    # Map the whole file, not just data:, so that a typo in a section name (`dat:`) is an
    # error here instead of silently preparing the default corpus.
    model = raw.get("model") or {}
    raw["model"] = ModelConfig.from_preset_dict(dict(model)) if isinstance(model, dict) else model
    cfg = from_dict(RunConfig, raw).data.validate()
    if opts.workers:
        cfg.num_workers = opts.workers
    tok = build_tokenizer(cfg)
    for prefix, _w, _name in resolve_datasets(cfg, tok, progress=not opts.no_progress):
        m = read_manifest(prefix)
        if m:
            _report(m, f"ready (built {m['created']})")
        else:
            print(f"{prefix}: prebuilt indexed dataset (no manifest)")
    return 0


def _train(opts) -> int:
    from grow_megatron.data.tokenizer import train_bpe_tokenizer  # megatron-core, as above

    if opts.vocab_size < 300:
        raise ConfigError("--vocab-size", opts.vocab_size, "must be at least 300 (256 byte tokens + merges + specials)")
    if opts.sample_chars < 1:
        raise ConfigError("--sample-chars", opts.sample_chars, "must be >= 1 (characters of text to train on)")
    for s in opts.sources:
        list_source_files(s, "SOURCE")
    if os.path.exists(opts.out) and not os.path.isdir(opts.out):
        raise ConfigError("--out", opts.out, "is a file: give a directory for tokenizer.json and its config files")
    _writable_dir(opts.out, "--out", opts.out)
    per = opts.sample_chars // len(opts.sources)

    def sample():
        for s in opts.sources:
            yield from first_chars(iter_texts(s, opts.text_field, field="--text-field", source_field="SOURCE"), per)

    tok = train_bpe_tokenizer(sample(), vocab_size=opts.vocab_size, eod_token=opts.eod_token)
    files = tok.save(opts.out)
    print(
        f"trained BPE vocab {tok.vocab_size} (eod {opts.eod_token!r} = {tok.eod}), sha {tok.sha256[:12]}: {', '.join(files)}"
    )
    return 0


def _inspect(opts) -> int:
    # megatron-core, as above.
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from grow_megatron.data.tokenizer import load_tokenizer

    prefix = opts.prefix[:-4] if opts.prefix.endswith((".bin", ".idx")) else opts.prefix
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
    for k in range(min(opts.samples, len(ds))):
        ids = ds[k]
        text = tok.detokenize(ids)[: opts.chars] if tok else str(ids[:32].tolist())
        print(f"--- document {k} ({len(ids)} tokens) ---\n{text}")
    return 0


def _make_default(opts) -> int:
    from grow_megatron.data.corpus import make_default_corpus  # megatron-core, as in _prepare

    corpus, tok = make_default_corpus(opts.out, vocab_size=opts.vocab_size)
    print(f"wrote {corpus} ({os.path.getsize(corpus)} bytes) and {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
