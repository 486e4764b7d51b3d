"""Tokenizer and dataset construction for a run, and the deterministic batch order.

* `build_tokenizer(cfg)` -> Tokenizer (the embedded one, a local one, or a BPE trained on a
  sample of the run's raw datasets and cached).
* `build_datasets(cfg, seq_length=, seed=, train_samples=, valid_samples=)` -> (train, valid):
  raw sources are prepared into `.bin/.idx` on first use (manifest; a no-op after), then
  megatron's BlendedMegatronDatasetBuilder builds GPTDatasets (one dataset) or a
  BlendedDataset (a weighted mixture), with megatron's own seeded document/sample/shuffle
  indices cached in `cache_dir/indices`. `train_samples` sizes the train dataset, so it never
  runs out (megatron repeats the data in epochs as needed).
* `get_microbatches(ds, step=, global_batch_size=, micro_batch_size=, dp_rank=, dp_size=)`:
  global step t consumes samples [t*gbs, (t+1)*gbs) of the dataset; DP rank r takes the r-th
  contiguous slice. The order depends only on the seed (through the dataset) and the step:
  not on the parallel layout and not on growth; resuming at step t gives the next batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from grow_megatron.config.base import ConfigError, DataError, UserError
from grow_megatron.config.data import DataConfig, split_vector
from grow_megatron.data.assets import default_corpus_path
from grow_megatron.data.prepare import has_indexed_files, prepare, read_manifest
from grow_megatron.data.readers import first_chars, iter_texts, list_source_files, source_id
from grow_megatron.data.tokenizer import DEFAULT_EOS, Tokenizer, load_tokenizer, train_bpe_tokenizer

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
_MAX_ID_SCAN_BYTES = 1 << 30  # check token ids of manifest-less datasets up to this .bin size


# --- distributed helpers (the data side must work with and without torch.distributed) -------
def _dist():
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


def _rank0_then_share(fn):
    """Run fn() on global rank 0 only and hand its result (or its UserError) to every rank."""
    dist = _dist()
    if dist is None:
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except UserError as err:
            box[0] = ("err", err)
    dist.broadcast_object_list(box, src=0)
    kind, payload = box[0]
    if kind == "err":
        raise payload
    return payload


# --- tokenizer ---------------------------------------------------------------------------
def build_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The run's tokenizer: `cfg.tokenizer`, or a BPE trained on the raw datasets
    (`cfg.tokenizer_vocab_size`), or the embedded default."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer, eod_token=cfg.eod_token)
    if cfg.tokenizer_vocab_size:
        path = _rank0_then_share(lambda: _train_tokenizer_cached(cfg))
        return load_tokenizer(path, eod_token=cfg.eod_token or None)
    return load_tokenizer(None, eod_token=cfg.eod_token)


def _train_tokenizer_cached(cfg: DataConfig) -> str:
    raw = []
    for i, (ds, w) in enumerate(zip(cfg.datasets, cfg.weights())):
        if w > 0 and not has_indexed_files(_strip_ext(ds.path)):
            files = list_source_files(ds.path, f"data.datasets[{i}].path")
            raw.append((ds, w, [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]))
    if not raw:
        raise ConfigError(
            "data.tokenizer_vocab_size",
            cfg.tokenizer_vocab_size,
            "trains on raw datasets, but every dataset is already tokenized (.bin/.idx): set data.tokenizer instead",
        )
    key = json.dumps(
        [
            cfg.tokenizer_vocab_size,
            cfg.tokenizer_train_chars,
            cfg.eod_token,
            cfg.text_field,
            [(d.text_field, w, f) for d, w, f in raw],
        ],
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    out = os.path.join(
        cfg.resolved_cache_dir(), "tokenizers", f"bpe{cfg.tokenizer_vocab_size}-{digest}", "tokenizer.json"
    )
    if os.path.isfile(out):
        return out
    total_w = sum(w for _, w, _ in raw)

    def sample():
        for ds, w, _ in raw:
            yield from first_chars(
                iter_texts(ds.path, ds.text_field or cfg.text_field, source_field="data.datasets[].path"),
                int(cfg.tokenizer_train_chars * w / total_w),
            )

    tok = train_bpe_tokenizer(
        sample(), vocab_size=cfg.tokenizer_vocab_size, out_path=out, eod_token=cfg.eod_token or DEFAULT_EOS
    )
    tok.save(os.path.dirname(out))
    return out


# --- dataset resolution ------------------------------------------------------------------
def _strip_ext(path: str) -> str:
    if path.startswith("hf:"):
        return path
    path = os.path.abspath(os.path.expanduser(path))
    return path[:-4] if path.endswith((".bin", ".idx")) and os.path.isfile(path) else path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "dataset"


def prepared_prefix(cfg: DataConfig, source: str, text_field: str, tokenizer: Tokenizer, name: str | None) -> str:
    """Where build_datasets prepares raw `source` (the cache directory, keyed by source,
    text field and tokenizer; a changed file re-prepares in place, see prepare.prepare)."""
    src = source_id(source)
    digest = hashlib.sha256(json.dumps([src, text_field, tokenizer.sha256]).encode()).hexdigest()[:16]
    stem = _slug(name or os.path.basename(src.rstrip("/").replace(":", "_")).split(".")[0])
    return os.path.join(cfg.resolved_cache_dir(), "prepared", f"{stem}-{digest}", "data")


def resolve_datasets(cfg: DataConfig, tokenizer: Tokenizer, *, progress: bool = True) -> list[tuple[str, float, str]]:
    """[(indexed-dataset prefix, weight, name)] of the mixture, with zero-weight datasets left
    out; raw sources are prepared (on rank 0) first. Checks tokenizers match."""
    tf_paths: dict[str, str] = {}
    if cfg.is_default():
        entries = [(default_corpus_path(), 1.0, "default", "text", "data.datasets")]
    else:
        entries = []
        for i, (ds, w) in enumerate(zip(cfg.datasets, cfg.weights())):
            if w > 0:
                entries.append(
                    (
                        ds.path,
                        w,
                        ds.name or _slug(os.path.basename(ds.path.rstrip("/")).split(".")[0]),
                        ds.text_field or cfg.text_field,
                        f"data.datasets[{i}].path",
                    )
                )
        tf_paths = {
            f"data.datasets[{i}].path": (f"data.datasets[{i}].text_field" if ds.text_field else "data.text_field")
            for i, ds in enumerate(cfg.datasets)
        }

    def prepare_all():
        # Check everything cheap first (missing/empty sources, tokenizers of tokenized datasets),
        # so no hours of tokenizing go by before a bad entry further down the list shows.
        for path, _, _, _, field in entries:
            if not has_indexed_files(_strip_ext(path)):
                list_source_files(path, field)
            else:
                check_indexed(_strip_ext(path), tokenizer, field)
        _check_tokenizers(
            [(_strip_ext(p), w, n, f) for p, w, n, _, f in entries if has_indexed_files(_strip_ext(p))], tokenizer
        )
        res = []
        for path, w, name, tf, field in entries:
            prefix = _strip_ext(path)
            if has_indexed_files(prefix):
                res.append((prefix, w, name, field))
                continue
            target = prepared_prefix(cfg, path, tf, tokenizer, name)
            prepare(
                path,
                target,
                tokenizer,
                text_field=tf,
                num_workers=cfg.num_workers,
                progress=progress,
                field=field,
                name=name,
                text_field_path=tf_paths.get(field, "data.text_field"),
            )
            res.append((target, w, name, field))
        return res

    out = _rank0_then_share(prepare_all)
    _check_tokenizers(out, tokenizer)
    return [(p, w, n) for p, w, n, _ in out]


def _check_tokenizers(items, tokenizer: Tokenizer) -> None:
    """Every dataset of a mixture must have been tokenized with one tokenizer: the run's."""
    seen: dict[str, tuple[str, str]] = {}
    for prefix, _w, _name, field in items:
        m = read_manifest(prefix)
        if m is None:
            continue
        sha = m["tokenizer"]["sha256"]
        for other_sha, (other_field, other_prefix) in seen.items():
            if other_sha != sha:
                raise DataError(
                    field,
                    prefix,
                    f"was tokenized with tokenizer {sha[:12]} but {other_field} ({other_prefix}) "
                    f"with {other_sha[:12]}: every dataset of one mixture needs the same tokenizer (re-prepare one of them)",
                )
        seen.setdefault(sha, (field, prefix))
        if sha != tokenizer.sha256:
            raise ConfigError(
                field,
                prefix,
                f"was tokenized with tokenizer {sha[:12]} ({m['tokenizer'].get('source')}), "
                f"not the run's tokenizer {tokenizer.sha256[:12]} ({tokenizer.source}): set data.tokenizer to "
                f"{m['tokenizer'].get('copy') or 'that tokenizer'} or re-prepare the dataset",
            )


def check_indexed(prefix: str, tokenizer: Tokenizer, field: str) -> None:
    """A user's `.bin/.idx` must be whole before training starts: a truncated or garbled file
    otherwise fails deep inside megatron, some of them only mid-training when a sample reaches
    the damaged part. Checks the sizes its manifest records (if it has ours), that the index
    describes the .bin exactly (documents laid end to end), and the token ids (up to 1 GiB)."""
    redo = "re-prepare it from its source (grow-megatron data prepare --force)"
    m = read_manifest(prefix)
    for ext, key in ((".bin", "bin_bytes"), (".idx", "idx_bytes")):
        size = os.path.getsize(prefix + ext)
        if m is not None and key in m and size != m[key]:
            raise DataError(
                field,
                prefix,
                f"{ext} is {size} bytes but its manifest records {m[key]}: the file is "
                f"truncated or was replaced; {redo}",
            )
    try:
        ds = IndexedDataset(prefix, mmap=True)  # held while its memory-mapped arrays are copied
        index = ds.index
        lengths = index.sequence_lengths.astype(np.int64)
        pointers = index.sequence_pointers.astype(np.int64)
        docs = index.document_indices.astype(np.int64)
        itemsize = np.dtype(index.dtype).itemsize
    except Exception as err:  # noqa: BLE001 - whatever megatron's reader trips on, the file is the cause
        why = (str(err).strip().splitlines() or [""])[0][:160]
        raise DataError(
            field, prefix, f"is not a readable megatron indexed dataset ({type(err).__name__}: {why}); {redo}"
        ) from None
    if len(lengths) == 0:
        raise DataError(field, prefix, "is an empty indexed dataset (no documents)")
    bin_bytes = os.path.getsize(prefix + ".bin")
    starts = np.concatenate([[0], np.cumsum(lengths[:-1])]) * itemsize
    if (
        (lengths < 0).any()
        or not np.array_equal(pointers, starts)
        or int(lengths.sum()) * itemsize != bin_bytes
        or docs[0] != 0
        or docs[-1] != len(lengths)
        or (np.diff(docs) < 0).any()
    ):
        raise DataError(
            field,
            prefix,
            f"has an index (.idx) that does not describe its .bin ({bin_bytes} bytes; the "
            f"index lists {int(lengths.clip(min=0).sum()) * itemsize}): one of them is truncated or "
            f"garbled; {redo}",
        )
    if bin_bytes <= _MAX_ID_SCAN_BYTES:
        top = int(np.memmap(prefix + ".bin", dtype=index.dtype, mode="r").max())
        if top >= tokenizer.vocab_size:
            raise DataError(
                field,
                prefix,
                f"holds token id {top}, beyond the run's tokenizer vocabulary "
                f"({tokenizer.vocab_size}, {tokenizer.source}): it was made with another tokenizer, "
                f"or its .bin is garbled",
            )


def _documents(prefix: str) -> int:
    m = read_manifest(prefix)
    if m:
        return int(m["documents"])
    return int(IndexedDataset(prefix, mmap=True).sequence_lengths.shape[0])


def _tokens(prefix: str) -> int:
    m = read_manifest(prefix)
    if m and "tokens" in m:
        return int(m["tokens"])
    ds = IndexedDataset(prefix, mmap=True)  # held while its memory-mapped lengths are read
    return int(ds.sequence_lengths.sum())


def _check_split(cfg: DataConfig, mixture, sizes: list[int]) -> None:
    """megatron splits each dataset's documents by `split`; an empty part it must sample from
    would loop forever inside megatron, so refuse it here."""
    vec = split_vector(cfg.split)
    bounds = np.concatenate([[0.0], np.cumsum(vec)])
    for prefix, _w, name in mixture:
        n = _documents(prefix)
        for i, part in enumerate(("train", "validation")):
            beg, end = int(round(bounds[i] * n)), int(round(bounds[i + 1] * n))
            if sizes[i] > 0 and vec[i] > 0 and end <= beg:
                raise ConfigError(
                    "data.split",
                    cfg.split,
                    f"leaves dataset {name} ({n} documents, {prefix}) no {part} "
                    f"documents: give it more documents or a larger {part} share",
                )


# --- datasets ----------------------------------------------------------------------------
def build_datasets(
    cfg: DataConfig,
    *,
    seq_length: int,
    seed: int,
    train_samples: int,
    valid_samples: int,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    batch_tokens: int = 0,
):
    """(train_ds, valid_ds): megatron GPTDataset (one dataset) or BlendedDataset (mixture).

    `ds[i]` is a dict of `tokens`, `labels`, `position_ids` (long) and `loss_mask` (float),
    each [seq_length] (a BlendedDataset adds `dataset_id`). `train_ds` has at least
    `train_samples` samples; `valid_ds` at least `valid_samples` (or one epoch of the
    validation documents when valid_samples is 0; None when the split has no validation part).
    `batch_tokens` (tokens of one global batch): warn when the whole corpus holds fewer, since
    every step then trains on the same few tokens again."""
    cfg.validate()
    if seq_length < 1:
        raise ConfigError("seq_length", seq_length, "must be >= 1")
    if train_samples < 1 or valid_samples < 0:
        raise ConfigError(
            "train_samples/valid_samples",
            (train_samples, valid_samples),
            "need train_samples >= 1 and valid_samples >= 0",
        )
    tok = tokenizer or build_tokenizer(cfg)
    mixture = resolve_datasets(cfg, tok, progress=progress)
    sizes = [int(train_samples), int(valid_samples), 0]
    _check_split(cfg, mixture, sizes)
    corpus = sum(_tokens(p) for p, _, _ in mixture)
    dist = _dist()
    if corpus < batch_tokens and (dist is None or dist.get_rank() == 0):
        log.warning(
            f"warning: the data holds {corpus} tokens, fewer than one global batch ({batch_tokens} tokens = "
            f"train.global_batch_size x model.seq_length): every step repeats the same text; add data or "
            f"lower train.global_batch_size / model.seq_length"
        )
    vec = split_vector(cfg.split)
    prefixes = [p for p, _, _ in mixture]
    weights = [w for _, w, _ in mixture] if len(mixture) > 1 else None
    gcfg = GPTDatasetConfig(
        random_seed=int(seed),
        sequence_length=int(seq_length),
        blend=(prefixes, weights),
        split=",".join(f"{v:.12g}" for v in vec),
        path_to_cache=os.path.join(cfg.resolved_cache_dir(), "indices"),
        tokenizer=tok,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=bool(cfg.eod_mask_loss),
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)
    with _single_process_rank(), _index_cache_lock(gcfg.path_to_cache):
        train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, gcfg).build()
    return train, valid


@contextlib.contextmanager
def _index_cache_lock(path: str):
    """megatron writes its index caches in place (not atomically) and takes a cache hit as soon
    as the files exist, so two processes on one machine (e.g. two runs or test sessions sharing
    the default cache) must not build the same cache at once. Only global rank 0 (or a single
    process) locks; the other ranks of a job wait for rank 0 inside megatron's own barrier."""
    dist = _dist()
    if dist is not None and dist.get_rank() != 0:
        yield
        return
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _single_process_rank():
    """megatron-core 0.16.1's BlendedDataset calls torch.distributed.get_rank() on an index-cache
    miss even without a process group (blended_dataset.py:153); answer rank 0 then."""
    if _dist() is not None:
        yield
        return
    dist = torch.distributed
    orig = dist.get_rank
    dist.get_rank = lambda group=None: 0
    try:
        yield
    finally:
        dist.get_rank = orig


# --- batches -----------------------------------------------------------------------------
def sample_indices(
    *, step: int, global_batch_size: int, dp_rank: int, dp_size: int, length: int | None = None
) -> list[int]:
    """The dataset indices DP rank `dp_rank` reads at global step `step` (wrapping around at
    `length`, if given, deterministically)."""
    if global_batch_size % dp_size:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by dp_size={dp_size}")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} is not in [0, {dp_size})")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    per_rank = global_batch_size // dp_size
    start = step * global_batch_size + dp_rank * per_rank
    idx = list(range(start, start + per_rank))
    return [i % length for i in idx] if length else idx


def get_microbatches(
    ds, *, step: int, global_batch_size: int, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1
) -> list[dict]:
    """The micro-batches of DP rank `dp_rank` at global step `step`: a list of
    (global_batch_size / dp_size / micro_batch_size) dicts of `tokens`, `labels`,
    `position_ids` (long) and `loss_mask` (float), each [micro_batch_size, seq_length]."""
    per_rank = global_batch_size // dp_size if dp_size > 0 else 0
    if dp_size < 1 or micro_batch_size < 1 or global_batch_size % dp_size or per_rank % micro_batch_size:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a multiple of micro_batch_size * dp_size "
            f"= {micro_batch_size} * {dp_size}"
        )
    n = len(ds)
    if n == 0:
        raise ValueError("the dataset is empty")
    idx = sample_indices(step=step, global_batch_size=global_batch_size, dp_rank=dp_rank, dp_size=dp_size, length=n)
    out = []
    for m in range(0, per_rank, micro_batch_size):
        items = [ds[i] for i in idx[m : m + micro_batch_size]]
        out.append({k: torch.stack([it[k] for it in items]) for k in BATCH_KEYS})
    return out


def describe_data(train_ds, tokens_to_train: int, cfg: DataConfig) -> str:
    """One line for a run's start: each dataset of the training split with its documents and
    tokens (and mixture weight), and how many epochs of it the run's tokens are."""
    datasets = getattr(train_ds, "datasets", None) or [train_ds]
    weights = getattr(train_ds, "weights", None) or [1.0] * len(datasets)
    if cfg.is_default():
        names = ["the embedded corpus"]
    else:  # the mixture's order (resolve_datasets leaves zero weights out)
        names = [
            ds.name or os.path.basename(ds.path.rstrip("/")) for ds, w in zip(cfg.datasets, cfg.weights()) if w > 0
        ]
    parts, total = [], 0
    for ds, w, name in zip(datasets, weights, names):
        tokens = int(ds.dataset.sequence_lengths[ds.indices].sum())
        total += tokens
        share = f", weight {w:.3g}" if len(datasets) > 1 else ""
        parts.append(f"{name} ({len(ds.indices):,} documents, {tokens:,} tokens{share})")
    epochs = f" = {tokens_to_train / total:.3g} epochs" if total else ""
    return f"data (train split): {'; '.join(parts)}; the whole run trains {tokens_to_train:,} tokens{epochs}"
