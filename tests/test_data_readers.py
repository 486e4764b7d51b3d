"""JSON Lines through the standard library equal HF `datasets`' json builder (the reference):
the same text batches in the same order, the same refusals. The engine reads JSON Lines (the
embedded corpus among them) without importing `datasets` (absent from the GPU image)."""

import bz2
import gzip
import json
import lzma
import subprocess
import sys

import pytest

from grow_megatron.config.base import ConfigError, DataError
from grow_megatron.data.assets import default_corpus_path
from grow_megatron.data.readers import iter_file_hf, iter_json_lines, iter_texts, json_lines_opener

RECORDS = [
    {"text": "first document\nwith two lines", "id": 1},
    {"text": "ünïcödé — 漢字 \u2028 emoji 🙂", "id": 2},
    {"text": None, "id": 3},
    {"id": 4, "meta": {"nested": [1, 2]}},  # no text field: None, skipped
    {"text": "", "id": 5},
    {"text": "   \n\t", "id": 6},
    {"text": 'quotes " and \\ backslashes', "id": 7},
    {"text": "last", "id": 8, "extra": "ignored"},
]
OPEN = {".jsonl": open, ".jsonl.gz": gzip.open, ".jsonl.xz": lzma.open, ".jsonl.bz2": bz2.open, ".ndjson": open}


def _write(path, lines: list[str], opener=open) -> str:
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(lines))
    return str(path)


def _both(path: str, text_field: str = "text", batch_size: int = 3):
    args = (text_field, "data.text_field", "data.datasets[].path", batch_size)
    return list(iter_json_lines(path, *args)), list(iter_file_hf(path, *args))


@pytest.mark.parametrize("suffix", list(OPEN))
def test_the_same_batches_as_datasets(tmp_path, suffix):
    # Blank lines and a CRLF line end on the way; batches of 3 cut the file mid-way.
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) + ("\r\n" if i == 1 else "\n") for i, r in enumerate(RECORDS)]
    lines.insert(3, "\n")
    path = _write(tmp_path / f"docs{suffix}", lines, OPEN[suffix])
    assert json_lines_opener(path) is OPEN[suffix]
    ours, ref = _both(path)
    assert ours == ref
    assert [t for b in ours for t in b] == [
        RECORDS[0]["text"],
        RECORDS[1]["text"],
        RECORDS[6]["text"],
        RECORDS[7]["text"],
    ]


def test_the_embedded_corpus_reads_the_same(one_thread):
    ours, ref = _both(default_corpus_path(), batch_size=1000)
    assert len(ours) == len(ref) and ours == ref
    assert sum(map(len, ours)) > 500  # documents, not an empty read


def test_a_missing_text_field_is_the_same_one_line_error(tmp_path):
    path = _write(tmp_path / "a.jsonl", [json.dumps({"body": "x", "n": 1}) + "\n"] * 2)
    errors = []
    for read in (iter_json_lines, iter_file_hf):
        with pytest.raises(ConfigError) as err:
            list(read(path, "text", "data.text_field", "data.datasets[].path", 1000))
        errors.append(str(err.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith("data.text_field = 'text': is not a column of") and "(columns: body, n)" in errors[0]


def test_a_text_field_of_numbers_is_the_same_data_error(tmp_path):
    path = _write(tmp_path / "n.jsonl", [json.dumps({"text": i}) + "\n" for i in range(3)])
    errors = []
    for read in (iter_json_lines, iter_file_hf):
        with pytest.raises(DataError) as err:
            list(read(path, "text", "data.text_field", "data.datasets[].path", 1000))
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "holds int values, not text" in errors[0]


@pytest.mark.parametrize(
    "lines",
    [[json.dumps({"text": "ok"}) + "\n", "{not json\n"], [json.dumps({"text": "ok"}) + "\n", "[1, 2]\n"]],
    ids=["not-json", "not-an-object"],
)
def test_an_unreadable_line_is_a_data_error_naming_the_file(tmp_path, lines):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=r"^data.datasets\[\].path = .*bad.jsonl.*: could not be read as json"):
        list(iter_json_lines(path, "text", "data.text_field", "data.datasets[].path", 1000))
    with pytest.raises(DataError):  # the reference refuses it too
        list(iter_file_hf(path, "text", "data.text_field", "data.datasets[].path", 1000))


def test_a_directory_mixes_readers_in_path_order(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    _write(d / "a.jsonl", [json.dumps({"text": "from jsonl"}) + "\n"])
    (d / "b.txt").write_text("from a text file")
    _write(d / "c.jsonl.gz", [json.dumps({"text": "from gz"}) + "\n"], gzip.open)
    assert [t for b in iter_texts(str(d)) for t in b] == ["from jsonl", "from a text file", "from gz"]


def test_json_lines_need_no_datasets_import(tmp_path):
    """The GPU image has no `datasets`: reading JSON Lines (the embedded corpus) must not import it."""
    path = _write(tmp_path / "d.jsonl", [json.dumps({"text": "hello"}) + "\n"])
    code = (
        "import sys\n"
        "from grow_megatron.data.readers import iter_texts\n"
        f"assert [t for b in iter_texts({path!r}) for t in b] == ['hello']\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'datasets'], 'datasets was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
