"""Raw text -> tokens -> megatron IndexedDataset `.bin/.idx`, with a manifest, atomically.

`prepare(source, out_prefix, tokenizer)` reads the source's documents (readers.iter_texts),
tokenizes them in worker processes (ordered, so the output does not depend on the number of
workers), appends the end-of-document id after each document and writes `PREFIX.bin` /
`PREFIX.idx` with megatron's IndexedDatasetBuilder (one sequence per document, exactly what
Megatron-LM's tools/preprocess_data.py writes), then `PREFIX.tokenizer.json` (a copy of the
tokenizer) and last `PREFIX.manifest.json`: what was built from what (source files with
sizes and mtimes, text field, tokenizer hash, document and token counts, file sizes).

A dataset is complete only when its manifest exists and matches the .bin/.idx sizes.
Everything is written to temporary names and renamed into place; the old manifest is removed
first and the new one written last, so an interrupted run never leaves a dataset that looks
complete. Re-running on unchanged inputs with the same tokenizer is a no-op.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import glob
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from grow_megatron.config.base import DataError
from grow_megatron.data.readers import iter_texts, list_source_files, source_id

FORMAT = "grow_megatron.data/1"
MANIFEST_SUFFIX = ".manifest.json"
TOKENIZER_SUFFIX = ".tokenizer.json"


def manifest_path(prefix: str) -> str:
    return prefix + MANIFEST_SUFFIX


def read_manifest(prefix: str) -> dict | None:
    try:
        with open(manifest_path(prefix), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def is_complete(prefix: str, manifest: dict | None = None) -> bool:
    """True when PREFIX.bin/.idx exist with the sizes their manifest records."""
    m = manifest if manifest is not None else read_manifest(prefix)
    if not m:
        return False
    try:
        return os.path.getsize(prefix + ".bin") == m["bin_bytes"] and os.path.getsize(prefix + ".idx") == m["idx_bytes"]
    except (OSError, KeyError):
        return False


def has_indexed_files(prefix: str) -> bool:
    return os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")


def source_fingerprint(source: str, text_field: str, tokenizer, field: str = "data.datasets[].path") -> dict:
    """What decides the prepared dataset's content: the source files (path, size, mtime), the
    text field and the tokenizer. Equal fingerprints -> re-preparing is a no-op."""
    files = list_source_files(source, field)
    src = [{"path": p, "size": os.path.getsize(p), "mtime_ns": os.stat(p).st_mtime_ns} for p in files]
    fp = {
        "format": FORMAT,
        "source": source_id(source),
        "files": src,
        "text_field": text_field,
        "tokenizer_sha256": tokenizer.sha256,
        "eod": tokenizer.eod,
    }
    fp["sha256"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
    return fp


# --- worker side (kept light: only numpy and tokenizers) -----------------------------------
_WORKER_TOK = None
_WORKER_EOD = 0


def _init_worker(tok_json: str, eod: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    global _WORKER_TOK, _WORKER_EOD
    _WORKER_TOK, _WORKER_EOD = HFTokenizer.from_str(tok_json), eod


def _encode(texts: list[str], tok=None, eod: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids (each document followed by eod) and the per-document lengths."""
    tok = tok or _WORKER_TOK
    eod = _WORKER_EOD if eod is None else eod
    encs = tok.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for e, n in zip(encs, lengths):
        flat[pos : pos + n - 1] = e.ids
        flat[pos + n - 1] = eod
        pos += n
    return flat, lengths


def _tokenized_batches(batches, tokenizer, num_workers: int):
    """Yield (flat, lengths) per batch, in input order, tokenizing in `num_workers` processes."""
    if num_workers <= 1:
        for texts in batches:
            yield _encode(texts, tokenizer._tok, tokenizer.eod)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer.to_json(), tokenizer.eod)) as pool:
        pending: collections.deque = collections.deque()
        for texts in batches:
            pending.append(pool.apply_async(_encode, (texts,)))
            while len(pending) >= 2 * num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _rechunk(batches, max_docs: int = 256, max_chars: int = 2_000_000):
    buf, chars = [], 0
    for texts in batches:
        for t in texts:
            buf.append(t)
            chars += len(t)
            if len(buf) >= max_docs or chars >= max_chars:
                yield buf
                buf, chars = [], 0
    if buf:
        yield buf


def _atomic_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def prefix_lock(path: str, on_open: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock on `path` that leaves no file behind.

    The holder unlinks the lock file before it unlocks. A process that was waiting on the old
    file then holds a lock on an unlinked inode: it sees that `path` no longer names its file
    and starts over on a fresh one, so two processes never both hold the lock. (A plain
    flock file, filelock's included, has to stay on disk for exactly that reason.) A file left
    by a killed process is simply locked, reused and removed. on_open: a test hook, called
    after the file is opened and before it is locked."""
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            if on_open is not None:
                on_open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                ours = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                ours = False
        except BaseException:
            os.close(fd)
            raise
        if ours:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the lock


def prepare(
    source: str,
    out_prefix: str,
    tokenizer,
    *,
    text_field: str = "text",
    num_workers: int = 1,
    progress: bool = True,
    force: bool = False,
    field: str = "data.datasets[].path",
    name: str | None = None,
    text_field_path: str = "data.text_field",
) -> dict:
    """Tokenize raw `source` into `out_prefix`.bin/.idx (+ .tokenizer.json, .manifest.json).

    Returns the manifest (with "skipped": True when the existing output already matched)."""
    # megatron-core (seconds): not at import, so that `grow-megatron data --help` answers at once.
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    out_prefix = os.path.abspath(os.path.expanduser(out_prefix))
    fp = source_fingerprint(source, text_field, tokenizer, field)
    old = read_manifest(out_prefix)
    if not force and old and old.get("fingerprint") == fp["sha256"] and is_complete(out_prefix, old):
        return dict(old, skipped=True)
    os.makedirs(os.path.dirname(out_prefix), exist_ok=True)
    with prefix_lock(out_prefix + ".lock"):  # another process preparing the same output waits here
        # Holding the lock, any temporary file of this prefix is a leftover of a killed run.
        for suffix in (".bin", ".idx", MANIFEST_SUFFIX, TOKENIZER_SUFFIX):
            _remove(*glob.glob(glob.escape(out_prefix + suffix) + ".tmp.*"))
        old = read_manifest(out_prefix)
        if not force and old and old.get("fingerprint") == fp["sha256"] and is_complete(out_prefix, old):
            return dict(old, skipped=True)
        return _prepare_locked(
            source,
            out_prefix,
            tokenizer,
            fp,
            text_field,
            num_workers,
            progress,
            field,
            name,
            text_field_path,
            DType,
            IndexedDatasetBuilder,
        )


def _prepare_locked(
    source,
    out_prefix,
    tokenizer,
    fp,
    text_field,
    num_workers,
    progress,
    field,
    name,
    text_field_path,
    DType,
    IndexedDatasetBuilder,
) -> dict:

    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    tag = f"{os.getpid()}"
    tmp_bin, tmp_idx = f"{out_prefix}.bin.tmp.{tag}", f"{out_prefix}.idx.tmp.{tag}"
    t0 = time.time()
    builder = IndexedDatasetBuilder(tmp_bin, dtype=dtype)
    n_docs = n_tokens = 0
    bar = tqdm(
        desc=f"tokenize {name or os.path.basename(source.rstrip('/'))}",
        unit="doc",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.5,
        dynamic_ncols=True,
    )
    try:
        batches = _rechunk(iter_texts(source, text_field, field=text_field_path, source_field=field))
        for flat, lengths in _tokenized_batches(batches, tokenizer, num_workers):
            builder.data_file.write(flat.astype(dtype).tobytes(order="C"))
            start = len(builder.sequence_lengths)
            builder.sequence_lengths.extend(lengths.tolist())
            builder.document_indices.extend(range(start + 1, start + len(lengths) + 1))
            n_docs += len(lengths)
            n_tokens += int(flat.size)
            bar.update(len(lengths))
            bar.set_postfix(tokens=f"{n_tokens / 1e6:.1f}M", refresh=False)
        bar.close()
        if n_docs == 0:
            raise DataError(field, source, f"is empty: no non-empty documents in field {text_field!r}")
        builder.finalize(tmp_idx)
        # Invalidate the old dataset first, then move the new files in; the manifest comes last.
        _remove(manifest_path(out_prefix), out_prefix + ".idx", out_prefix + ".bin")
        os.replace(tmp_bin, out_prefix + ".bin")
        os.replace(tmp_idx, out_prefix + ".idx")
        tok_copy = out_prefix + TOKENIZER_SUFFIX
        with open(tok_copy + f".tmp.{tag}", "w", encoding="utf-8") as f:
            f.write(tokenizer.to_json())
        os.replace(tok_copy + f".tmp.{tag}", tok_copy)
        manifest = {
            "format": FORMAT,
            "prefix": out_prefix,
            "name": name,
            "fingerprint": fp["sha256"],
            "source": fp["source"],
            "files": fp["files"],
            "text_field": text_field,
            "tokenizer": dict(tokenizer.describe(), copy=tok_copy),
            "dtype": np.dtype(dtype).name,
            "documents": n_docs,
            "tokens": n_tokens,
            "bin_bytes": os.path.getsize(out_prefix + ".bin"),
            "idx_bytes": os.path.getsize(out_prefix + ".idx"),
            "seconds": round(time.time() - t0, 3),
            "num_workers": num_workers,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _atomic_json(manifest_path(out_prefix), manifest)
        return dict(manifest, skipped=False)
    finally:
        bar.close()
        if not builder.data_file.closed:
            builder.data_file.close()
        _remove(tmp_bin, tmp_idx)
