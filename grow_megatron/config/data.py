"""DataConfig: the `data:` section of a run config.

With no `data:` section (or `datasets: []`) a run trains on the embedded default corpus with
the embedded tokenizer; see docs/data.md.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from grow_megatron.config.base import ConfigError, check

# docs/method.md §9: the paper's SmolLM-corpus mixture, by proportion.
PAPER_MIXTURE: dict[str, float] = {
    "fineweb-edu": 0.70,
    "cosmopedia-v2": 0.15,
    "python-edu": 0.09,
    "open-web-math": 0.06,
}
PRESETS: dict[str, dict[str, float]] = {"smollm-corpus": PAPER_MIXTURE}

DEFAULT_CACHE_ENV = "GROW_MEGATRON_CACHE"


def default_cache_dir() -> str:
    """$GROW_MEGATRON_CACHE/data, else $XDG_CACHE_HOME/grow_megatron/data, else ~/.cache/grow_megatron/data."""
    root = os.environ.get(DEFAULT_CACHE_ENV)
    if root:
        return os.path.join(os.path.expanduser(root), "data")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "grow_megatron", "data")


@dataclass
class DatasetSpec:
    """One dataset of the training mixture."""

    path: str = ""
    """A megatron indexed dataset prefix (`PREFIX.bin` + `PREFIX.idx` exist, e.g. written by
    `grow-megatron data prepare` or Megatron-LM's preprocess_data.py), or a raw source to
    tokenize on first use: a .jsonl/.json/.parquet/.arrow/.txt/.md file (also .gz/.xz/.bz2/.zst
    compressed), a directory of such files, a `datasets.save_to_disk` directory, or
    `hf:REPO[:CONFIG]` (split "train" of `datasets.load_dataset(REPO, CONFIG)`: a hub dataset
    such as `hf:HuggingFaceTB/smollm-corpus:fineweb-edu-dedup`, or a local directory laid out
    like a hub dataset repository)."""

    weight: float | None = None
    """Sampling weight (relative; normalised over the mixture). Empty: 1.0, or the preset's
    weight for `name` when `data.preset` is set."""

    name: str | None = None
    """A short name (logs, cache directory names). With `data.preset` it must be one of the
    preset's dataset names (e.g. fineweb-edu, cosmopedia-v2, python-edu, open-web-math)."""

    text_field: str | None = None
    """Column holding the document text in a raw source; empty: `data.text_field`."""


@dataclass
class DataConfig:
    """Training data: where it comes from, how it is tokenized, mixed and split."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    """The mixture. Empty: the embedded default corpus (Python standard-library docs and code)."""

    preset: str | None = None
    """A named mixture whose weights fill in the datasets' empty weights by `name`:
    `smollm-corpus` (docs/method.md §9: fineweb-edu 0.70, cosmopedia-v2 0.15, python-edu 0.09,
    open-web-math 0.06; give each one's local path)."""

    tokenizer: str | None = None
    """A tokenizer.json file or a HF tokenizer directory holding one. Empty: the embedded
    4096-token BPE, unless `tokenizer_vocab_size` asks for a newly trained one."""

    tokenizer_vocab_size: int | None = None
    """With `tokenizer` empty and raw `datasets`: train a byte-level BPE of this vocabulary size
    on a sample of the datasets (cached in `cache_dir`)."""

    tokenizer_train_chars: int = 50_000_000
    """How many characters of text (spread over the datasets by weight) train that BPE."""

    eod_token: str | None = None
    """The end-of-document token appended after every document. Empty: the tokenizer's
    eos_token (tokenizer_config.json) or the first of <|endoftext|>, </s>, ... it has."""

    text_field: str = "text"
    """Column of raw sources that holds the document text (each dataset may override it)."""

    split: str | list[float] = "98,2,0"
    """Train, validation, test proportions of every dataset's documents, as megatron reads
    them: "98,2,0", "98,2" or a list [0.98, 0.02] (the test part is not used)."""

    cache_dir: str | None = None
    """Where prepared .bin/.idx of raw sources, trained tokenizers and megatron's index caches
    go. Empty: $GROW_MEGATRON_CACHE/data or ~/.cache/grow_megatron/data."""

    num_workers: int = 1
    """Tokenizer worker processes when preparing a raw source (1: in the main process)."""

    eod_mask_loss: bool = False
    """Mask the loss on end-of-document tokens (off: the model learns to predict document ends)."""

    def validate(self, path: str = "data") -> DataConfig:
        p = lambda name: f"{path}.{name}"  # noqa: E731
        check(
            self.preset is None or self.preset in PRESETS,
            p("preset"),
            self.preset,
            f"must be one of {', '.join(PRESETS)} or empty",
        )
        for i, ds in enumerate(self.datasets):
            q = f"{path}.datasets[{i}]"
            check(
                isinstance(ds.path, str) and ds.path.strip() != "",
                f"{q}.path",
                ds.path,
                "must name an indexed dataset prefix or a raw source file/directory",
            )
            if ds.weight is not None:
                check(
                    math.isfinite(ds.weight) and ds.weight >= 0,
                    f"{q}.weight",
                    ds.weight,
                    "must be a finite number >= 0",
                )
            if ds.text_field is not None:
                check(ds.text_field.strip() != "", f"{q}.text_field", ds.text_field, "may not be blank")
            if self.preset is not None:
                names = PRESETS[self.preset]
                check(
                    ds.name in names,
                    f"{q}.name",
                    ds.name,
                    f"with preset {self.preset} must be one of {', '.join(names)}",
                )
        if self.preset is not None:
            given = [d.name for d in self.datasets]
            missing = [n for n in PRESETS[self.preset] if n not in given]
            check(
                not missing,
                p("datasets"),
                given,
                f"preset {self.preset} needs a local path for each of {', '.join(PRESETS[self.preset])} (missing: {', '.join(missing)})",
            )
            dup = sorted({n for n in given if given.count(n) > 1})
            check(not dup, p("datasets"), given, f"names each preset dataset once (repeated: {', '.join(dup)})")
        if self.datasets:
            weights = self.weights()
            check(sum(weights) > 0, p("datasets"), weights, "weights may not all be zero")
        check(self.text_field.strip() != "", p("text_field"), self.text_field, "may not be blank")
        if self.tokenizer_vocab_size is not None:
            check(
                self.tokenizer_vocab_size >= 300,
                p("tokenizer_vocab_size"),
                self.tokenizer_vocab_size,
                "must be at least 300 (256 byte tokens + merges + specials)",
            )
            check(
                self.tokenizer is None,
                p("tokenizer_vocab_size"),
                self.tokenizer_vocab_size,
                "trains a new tokenizer, so data.tokenizer must be empty (use one or the other)",
            )
        check(self.tokenizer_train_chars > 0, p("tokenizer_train_chars"), self.tokenizer_train_chars, "must be > 0")
        split_vector(self.split, p("split"))
        check(self.num_workers >= 1, p("num_workers"), self.num_workers, "must be >= 1")
        return self

    # --- derived --------------------------------------------------------------------------
    def weights(self) -> list[float]:
        """The datasets' weights with empty ones filled in (preset weight or 1.0), unnormalised."""
        out = []
        for ds in self.datasets:
            if ds.weight is not None:
                out.append(float(ds.weight))
            elif self.preset is not None and ds.name in PRESETS[self.preset]:
                out.append(PRESETS[self.preset][ds.name])
            else:
                out.append(1.0)
        return out

    def resolved_cache_dir(self) -> str:
        return os.path.abspath(os.path.expanduser(self.cache_dir)) if self.cache_dir else default_cache_dir()

    def is_default(self) -> bool:
        return not self.datasets


def split_vector(split: str | list[float], path: str = "data.split") -> list[float]:
    """Parse "98,2,0" / "98,2" / "0.98 0.02" / [0.98, 0.02] into three proportions summing to 1."""
    if isinstance(split, (list, tuple)):
        parts = [str(v) for v in split]
    else:
        parts = [s for s in re.split(r"[,\s/]+", str(split).strip()) if s]
    try:
        vals = [float(s) for s in parts]
    except ValueError:
        raise ConfigError(path, split, 'must be two or three comma-separated numbers, e.g. "98,2,0"') from None
    check(2 <= len(vals) <= 3, path, split, 'must be two or three comma-separated numbers, e.g. "98,2,0"')
    check(all(math.isfinite(v) and v >= 0 for v in vals), path, split, "proportions must be >= 0")
    vals += [0.0] * (3 - len(vals))
    check(vals[0] > 0, path, split, "the train proportion must be > 0")
    total = sum(vals)
    return [v / total for v in vals]
