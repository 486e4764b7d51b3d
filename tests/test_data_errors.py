"""Bad data input stops with one clear line (field, value, what is allowed): a ConfigError
for the config, a DataError for the data."""

from __future__ import annotations

import json
import os

import pytest

from grow_megatron.config.base import ConfigError, DataError, from_dict
from grow_megatron.config.data import DataConfig, DatasetSpec
from grow_megatron.data.datasets import build_datasets
from grow_megatron.data.prepare import prepare
from grow_megatron.data.tokenizer import load_tokenizer, train_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def _jsonl(path, texts, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({field: t}) + "\n")
    return str(path)


def _build(cfg, **kw):
    return build_datasets(cfg, seq_length=8, seed=0, train_samples=kw.get("n", 10), valid_samples=2, progress=False)


def test_missing_and_empty_sources(tmp_path, tok):
    with pytest.raises(ConfigError, match=r"nope.jsonl': no such file or directory"):
        _build(DataConfig(datasets=[DatasetSpec(path=str(tmp_path / "nope.jsonl"))], cache_dir=str(tmp_path)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty file"):
        prepare(str(tmp_path / "empty.jsonl"), str(tmp_path / "o1"), tok, progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="directory holds no readable files"):
        prepare(str(tmp_path / "d"), str(tmp_path / "o2"), tok, progress=False)
    blank = _jsonl(tmp_path / "blank.jsonl", ["", "   ", "\n"])
    with pytest.raises(DataError, match=r"blank.jsonl': is empty: no non-empty documents in field 'text'"):
        prepare(blank, str(tmp_path / "o3"), tok, progress=False)
    # Nothing half-written was left behind, not even the lock file.
    assert not [p for p in os.listdir(tmp_path) if p.startswith("o")]


def test_missing_text_field(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", ["hello", "world"], field="body")
    cfg = DataConfig(datasets=[DatasetSpec(path=src)], cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^data.text_field = 'text': is not a column of .*a.jsonl \(columns: body\)"):
        _build(cfg)
    cfg = DataConfig(datasets=[DatasetSpec(path=src, text_field="content")], cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^data.datasets\[0\].text_field = 'content': is not a column"):
        _build(cfg)


def test_tokenizer_mismatch_within_mixture(tmp_path, tok):
    a = _jsonl(tmp_path / "a.jsonl", [f"alpha {i} beta" for i in range(50)])
    b = _jsonl(tmp_path / "b.jsonl", [f"gamma {i} delta" for i in range(50)])
    other = train_bpe_tokenizer([f"gamma {i} delta" for i in range(200)], vocab_size=300)
    prepare(a, str(tmp_path / "pa"), tok, progress=False)
    prepare(b, str(tmp_path / "pb"), other, progress=False)
    cfg = DataConfig(
        datasets=[DatasetSpec(path=str(tmp_path / "pa")), DatasetSpec(path=str(tmp_path / "pb"))],
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(
        DataError,
        match=r"data.datasets\[1\].path = .*pb': was tokenized with tokenizer .* but "
        r"data.datasets\[0\].path .* same tokenizer",
    ):
        _build(cfg)
    # One dataset made with another tokenizer than the run's.
    cfg = DataConfig(datasets=[DatasetSpec(path=str(tmp_path / "pb"))], cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"not the run's tokenizer .* set data.tokenizer to .*pb.tokenizer.json"):
        _build(cfg)
    cfg.tokenizer = str(tmp_path / "pb.tokenizer.json")
    train, _ = _build(cfg)
    assert len(train) >= 10


def test_bad_weights_split_and_tokenizer_paths(tmp_path):
    for weights, msg in (
        ([-1.0, 1.0], r"data.datasets\[0\].weight = -1.0: must be a finite number >= 0"),
        ([0.0, 0.0], r"data.datasets = \[0.0, 0.0\]: weights may not all be zero"),
    ):
        cfg = DataConfig(datasets=[DatasetSpec(path="/x", weight=w) for w in weights])
        with pytest.raises(ConfigError, match=msg):
            cfg.validate()
    with pytest.raises(ConfigError, match=r"data.split = '98,x': must be two or three"):
        DataConfig(split="98,x").validate()
    with pytest.raises(ConfigError, match=r"data.split = '0,1': the train proportion must be > 0"):
        DataConfig(split="0,1").validate()
    with pytest.raises(ConfigError, match=r"data.datasets\[0\].weight = 'heavy': must be a number"):
        from_dict(DataConfig, {"datasets": [{"path": "/x", "weight": "heavy"}]}, "data")
    with pytest.raises(ConfigError, match=r"data.tokenizer = .*nope': no such file or directory"):
        _build(DataConfig(tokenizer=str(tmp_path / "nope")))
    (tmp_path / "tokdir").mkdir()
    with pytest.raises(ConfigError, match="directory has no tokenizer.json"):
        _build(DataConfig(tokenizer=str(tmp_path / "tokdir")))
    with pytest.raises(ConfigError, match=r"data.preset = 'pile': must be one of smollm-corpus"):
        DataConfig(preset="pile").validate()


def test_split_leaving_a_part_empty(tmp_path):
    src = _jsonl(tmp_path / "few.jsonl", ["one document", "another one", "a third"])
    cfg = DataConfig(datasets=[DatasetSpec(path=src)], cache_dir=str(tmp_path), split="98,2,0")
    with pytest.raises(
        ConfigError, match=r"data.split = '98,2,0': leaves dataset few \(3 documents.*no validation documents"
    ):
        _build(cfg)


def test_cli_prints_one_line(tmp_path, capsys):
    from grow_megatron.cli import main

    rc = main(["data", "prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("grow-megatron data: SOURCE = ") and "no such file" in err[0]


def test_foreign_indexed_dataset_checked_against_vocab(tmp_path):
    """A .bin/.idx without our manifest (e.g. Megatron-LM's preprocess_data.py) is used as is,
    but token ids beyond the run's vocabulary are refused."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    for name, top in (("ok", 4000), ("big", 9000)):
        b = IndexedDatasetBuilder(str(tmp_path / f"{name}.bin"), dtype=np.uint16)
        for k in range(60):
            b.add_document(np.arange(k, k + 40) % top + (top - 40 if k == 0 else 0), [40])
        b.finalize(str(tmp_path / f"{name}.idx"))
    train, _ = _build(DataConfig(datasets=[DatasetSpec(path=str(tmp_path / "ok.bin"))], cache_dir=str(tmp_path / "c")))
    assert len(train) >= 10
    with pytest.raises(DataError, match=r"big': holds token id 8999, beyond the run's tokenizer vocabulary \(4096"):
        _build(DataConfig(datasets=[DatasetSpec(path=str(tmp_path / "big"))], cache_dir=str(tmp_path / "c")))


def _damaged_copies(tmp_path, tok):
    """A prepared dataset and copies of it damaged as a crash or a bad copy leaves them."""
    import shutil

    src = _jsonl(tmp_path / "src.jsonl", [f"document {i} with a few words of text" for i in range(40)])
    prepare(src, str(tmp_path / "ok" / "d"), tok, progress=False)
    out = {}
    for name in ("bin_truncated", "bin_truncated_no_manifest", "idx_garbled", "idx_header"):
        shutil.copytree(tmp_path / "ok", tmp_path / name)
        out[name] = tmp_path / name / "d"
    for name in ("bin_truncated", "bin_truncated_no_manifest"):
        with open(f"{out[name]}.bin", "r+b") as f:
            f.truncate(os.path.getsize(f"{out[name]}.bin") // 2)
    os.remove(f"{out['bin_truncated_no_manifest']}.manifest.json")
    with open(f"{out['idx_garbled']}.idx", "r+b") as f:  # random bytes inside the pointer table, same size
        f.seek(os.path.getsize(f"{out['idx_garbled']}.idx") - 100)
        f.write(bytes(range(200, 232)))
    with open(f"{out['idx_header']}.idx", "r+b") as f:
        f.write(b"garbage!")
    return out


@pytest.mark.parametrize(
    "name,message",
    [
        (
            "bin_truncated",
            r"d': \.bin is \d+ bytes but its manifest records \d+: the file is truncated or was replaced; "
            r"re-prepare it",
        ),
        (
            "bin_truncated_no_manifest",
            r"d': has an index \(\.idx\) that does not describe its \.bin \(\d+ bytes; the index "
            r"lists \d+\): one of them is truncated or garbled",
        ),
        ("idx_garbled", r"d': has an index \(\.idx\) that does not describe its \.bin"),
        ("idx_header", r"d': is not a readable megatron indexed dataset \(AssertionError: bad header"),
    ],
)
def test_truncated_or_garbled_prepared_dataset_is_one_line(tmp_path, tok, name, message):
    damaged = _damaged_copies(tmp_path, tok)
    with pytest.raises(DataError, match=r"^data.datasets\[0\].path = '.*" + message):
        _build(DataConfig(datasets=[DatasetSpec(path=str(damaged[name]))], cache_dir=str(tmp_path / "c")))


def test_corpus_smaller_than_one_global_batch_warns_once(tmp_path, caplog):
    src = _jsonl(tmp_path / "one.jsonl", ["hi"])  # one document: 1 token + end of document
    cfg = DataConfig(datasets=[DatasetSpec(path=src)], split="100,0", cache_dir=str(tmp_path))
    with caplog.at_level("WARNING"):
        build_datasets(cfg, seq_length=8, seed=0, train_samples=4, valid_samples=0, progress=False, batch_tokens=32)
    warned = [r.getMessage() for r in caplog.records if "fewer than one global batch" in r.getMessage()]
    assert warned == [
        "warning: the data holds 2 tokens, fewer than one global batch (32 tokens = "
        "train.global_batch_size x model.seq_length): every step repeats the same text; add data or "
        "lower train.global_batch_size / model.seq_length"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):  # a batch the corpus covers: quiet
        build_datasets(cfg, seq_length=1, seed=0, train_samples=4, valid_samples=0, progress=False, batch_tokens=2)
    assert not [r for r in caplog.records if "global batch" in r.getMessage()]


def test_prepare_leaves_no_lock_file(tmp_path, tok):
    src = _jsonl(tmp_path / "a.jsonl", ["hello world", "more text"])
    (tmp_path / "out.lock").write_text("")  # left by a killed run: reused, then removed
    prepare(src, str(tmp_path / "out"), tok, progress=False)
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("out")) == [
        "out.bin",
        "out.idx",
        "out.manifest.json",
        "out.tokenizer.json",
    ]


def test_prefix_lock_waiter_retries_on_a_fresh_file(tmp_path):
    """A process that opened the lock file before the holder removed it must not run on the
    removed file: it starts over, and enters only after the holder left."""
    import threading

    from grow_megatron.data.prepare import prefix_lock

    path = str(tmp_path / "x.lock")
    events, opened = [], threading.Event()

    def waiter():
        with prefix_lock(path, on_open=lambda: (events.append("open"), opened.set())):
            events.append("waiter in")
            assert os.path.exists(path)  # its own, fresh file

    with prefix_lock(path):
        t = threading.Thread(target=waiter)
        t.start()
        opened.wait()  # the waiter holds the holder's file open
        events.append("holder out")
    t.join()
    assert events == ["open", "holder out", "open", "waiter in"]
    assert not os.path.exists(path)
