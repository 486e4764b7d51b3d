"""Reading documents out of local raw sources with HF `datasets` (streaming: no arrow cache copy).
JSON Lines files (.jsonl, .ndjson; plain, .gz, .xz or .bz2) are read with the standard library
instead: the same documents in the same order (tests/test_data_readers.py holds the two readers
equal), without importing `datasets` (seconds, and absent from the GPU image), so a run on the
embedded corpus or on JSON Lines needs only the engine's own dependencies.

Supported: .jsonl/.json/.ndjson, .parquet, .arrow, .txt/.md/.text (one document per file), each
also .gz/.xz/.bz2/.zst/.lz4-compressed for the text formats; a directory of such files
(recursively, sorted); a directory written by `datasets.Dataset.save_to_disk`.
Document order is deterministic: files sorted by path, rows in file order.

`hf:REPO[:CONFIG]` reads split "train" of `datasets.load_dataset(REPO, CONFIG, streaming=True)`:
a Hugging Face hub dataset (e.g. `hf:HuggingFaceTB/smollm-corpus:cosmopedia-v2`, needs the
network) or a local directory laid out like a hub dataset repository (data files found by
HF's patterns or by the `configs:` of its README.md) -- the same code path, tested locally.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections.abc import Callable, Iterable, Iterator

from grow_megatron.config.base import ConfigError, DataError

_COMPRESSIONS = (".gz", ".xz", ".bz2", ".zst", ".lz4")
_FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
    ".md": "text",
    ".text": "text",
}
SUPPORTED = ", ".join(sorted(_FORMATS))
_JSON_LINES = (".jsonl", ".ndjson")
_STDLIB_OPENERS = {"": open, ".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def file_format(path: str) -> str | None:
    """The HF `datasets` builder for a file by its extension (compression suffixes stripped)."""
    name = path.lower()
    for c in _COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt
    return None


def is_saved_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


HF_PREFIX = "hf:"


def parse_hf(path: str) -> tuple[str, str | None]:
    """'hf:REPO[:CONFIG]' -> (REPO, CONFIG); a local REPO directory is made absolute."""
    rest = path[len(HF_PREFIX) :]
    repo, config = rest, None
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if tail and "/" not in tail:
            repo, config = head, tail
    local = os.path.expanduser(repo)
    if os.path.isdir(local):
        repo = os.path.abspath(local)
    return repo, config


def source_id(path: str) -> str:
    """A stable name of a source (absolute path, or the hf: spec with a local repo made absolute)."""
    if path.startswith(HF_PREFIX):
        repo, config = parse_hf(path)
        return HF_PREFIX + repo + (f":{config}" if config else "")
    return os.path.abspath(os.path.expanduser(path))


def list_source_files(path: str, field: str = "data.datasets[].path") -> list[str]:
    """The files a raw source consists of (absolute, sorted); ConfigError if missing or empty.
    A remote `hf:` dataset has no local files: [] (its fingerprint is its name)."""
    if path.startswith(HF_PREFIX):
        repo, _ = parse_hf(path)
        if not os.path.isdir(repo):
            if os.path.isabs(repo) or repo.startswith((".", "~")) or repo.count("/") != 1:
                raise ConfigError(field, path, "hf: needs a hub dataset name ORG/NAME or an existing local directory")
            return []
        files = []
        for root, dirs, names in os.walk(repo):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        if not files:
            raise ConfigError(field, path, "directory is empty (no data files)")
        return sorted(files)
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ConfigError(field, path, "no such file or directory")
    if os.path.isfile(path):
        if file_format(path) is None:
            raise ConfigError(field, path, f"unsupported file type (supported: {SUPPORTED}, optionally compressed)")
        if os.path.getsize(path) == 0:
            raise DataError(field, path, "is an empty file (no documents)")
        return [path]
    if is_saved_dataset_dir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            files += [os.path.join(root, n) for n in sorted(names)]
        return sorted(files)
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".") and file_format(n)]
    if not files:
        raise DataError(
            field, path, f"directory holds no readable files (supported: {SUPPORTED}, optionally compressed)"
        )
    return sorted(files)


def _check_field(columns, text_field: str, where: str, field: str) -> None:
    if columns is not None and text_field not in columns:
        raise ConfigError(field, text_field, f"is not a column of {where} (columns: {', '.join(map(str, columns))})")


def iter_texts(
    path: str,
    text_field: str = "text",
    *,
    field: str = "data.text_field",
    batch_size: int = 1000,
    source_field: str = "data.datasets[].path",
) -> Iterator[list[str]]:
    """Yield lists of document texts of a raw source, in a fixed order. Empty/None texts skipped."""
    files = list_source_files(path, source_field)
    if path.startswith(HF_PREFIX):
        yield from _iter_hf(path, text_field, field, source_field, batch_size)
        return
    apath = os.path.abspath(os.path.expanduser(path))
    if is_saved_dataset_dir(apath):
        datasets = _datasets()
        ds = datasets.load_from_disk(apath)
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(
                    source_field, apath, f"saved DatasetDict has no 'train' split (splits: {', '.join(ds)})"
                )
            ds = ds["train"]
        _check_field(ds.column_names, text_field, apath, field)
        for start in range(0, len(ds), batch_size):
            yield _clean(ds[start : start + batch_size][text_field], apath, text_field, field)
        return
    for file in files:
        read = iter_json_lines if json_lines_opener(file) else iter_file_hf
        yield from read(file, text_field, field, source_field, batch_size)


def _datasets():
    """HF datasets, quiet (seconds to import: only where a raw source needs it, never in a run
    over prepared data or on JSON Lines)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def iter_file_hf(file: str, text_field: str, field: str, source_field: str, batch_size: int) -> Iterator[list[str]]:
    """The text batches of one local file through HF `datasets`' builder for its format."""
    datasets = _datasets()
    fmt = file_format(file)
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files=[file], split="train", streaming=True, **kwargs)
    except Exception as err:  # pragma: no cover - builder-specific failures
        raise DataError(
            source_field, file, f"could not be read as {fmt} ({type(err).__name__}: {str(err)[:160]})"
        ) from None
    tf = "text" if fmt == "text" else text_field
    batches = ds.iter(batch_size=batch_size)
    yield from _checked_batches(batches, tf, file, field, source_field, f"could not be read as {fmt}")


def json_lines_opener(path: str) -> Callable | None:
    """The standard-library opener of a JSON Lines file (plain, .gz, .xz, .bz2), or None for any
    other file (read through HF `datasets`)."""
    name = path.lower()
    comp = next((c for c in _STDLIB_OPENERS if c and name.endswith(c)), "")
    return _STDLIB_OPENERS[comp] if name[: len(name) - len(comp)].endswith(_JSON_LINES) else None


def iter_json_lines(file: str, text_field: str, field: str, source_field: str, batch_size: int) -> Iterator[list[str]]:
    """The text batches of a JSON Lines file, as `iter_file_hf` gives them: the same column
    check, cleaning and one-line DataError (`_checked_batches`), over `_json_lines_columns`."""
    batches = _json_lines_columns(file, text_field, batch_size)
    yield from _checked_batches(batches, text_field, file, field, source_field, "could not be read as json")


def _json_lines_columns(file: str, text_field: str, batch_size: int) -> Iterator[dict]:
    """Batches of a JSON Lines file shaped as `datasets` yields them: the columns are the keys
    of the first batch's records, in first-seen order (the schema `datasets` infers), and the
    text column holds each record's text, None where a record has none; blank lines skipped."""
    columns: dict = {}
    texts: list = []
    first = True
    with json_lines_opener(file)(file, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"line {n} is a JSON {type(rec).__name__}, not an object")
            if first:
                columns.update(dict.fromkeys(rec))
            texts.append(rec.get(text_field))
            if len(texts) == batch_size:
                yield {**columns, text_field: texts} if text_field in columns else columns
                texts, first = [], False
    if texts:
        yield {**columns, text_field: texts} if text_field in columns else columns


def _iter_hf(path: str, text_field: str, field: str, source_field: str, batch_size: int) -> Iterator[list[str]]:
    datasets = _datasets()
    repo, config = parse_hf(path)
    try:
        ds = datasets.load_dataset(repo, config, split="train", streaming=True)
    except Exception as err:
        raise ConfigError(
            source_field,
            path,
            f"could not be opened with datasets.load_dataset ({type(err).__name__}: {str(err)[:200]})",
        ) from None
    yield from _checked_batches(
        ds.iter(batch_size=batch_size), text_field, path, field, source_field, "could not be read"
    )


def _checked_batches(
    batches: Iterable[dict], text_field: str, where: str, field: str, source_field: str, failure: str
) -> Iterator[list[str]]:
    """Text batches of column batches (a HF dataset's `iter`, or `_json_lines_columns`): the
    text field checked on the first batch, any reader failure turned into one DataError naming
    the source."""
    checked = False
    try:
        for batch in batches:
            if not checked:
                _check_field(list(batch.keys()), text_field, where, field)
                checked = True
            yield _clean(batch[text_field], where, text_field, field)
    except (ConfigError, DataError):
        raise
    except Exception as err:
        raise DataError(source_field, where, f"{failure} ({type(err).__name__}: {str(err)[:200]})") from None


def _clean(texts, where: str, text_field: str, field: str) -> list[str]:
    out = []
    for t in texts:
        if t is None:
            continue
        if not isinstance(t, str):
            raise DataError(field, text_field, f"column of {where} holds {type(t).__name__} values, not text")
        if t.strip():
            out.append(t)
    return out


def first_chars(batches: Iterable[list[str]], budget: int) -> Iterator[str]:
    """The documents of `batches` (lists of texts) up to `budget` characters in all, the last
    one cut short; reading stops there (a tokenizer-training sample of a large source)."""
    for texts in batches:
        for t in texts:
            if budget <= 0:
                return
            yield t[:budget]
            budget -= len(t)
