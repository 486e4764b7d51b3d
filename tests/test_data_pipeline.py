"""Data pipeline: raw text -> .bin/.idx round trip, manifests, mixtures, deterministic order, errors."""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest

from grow_megatron.config.base import ConfigError, from_dict
from grow_megatron.config.data import DataConfig, DatasetSpec
from grow_megatron.data.datasets import build_datasets, build_tokenizer, get_microbatches, sample_indices
from grow_megatron.data.prepare import is_complete, prepare, read_manifest
from grow_megatron.data.tokenizer import load_tokenizer

WORDS = (
    "alpha beta gamma delta epsilon zeta theta lambda sigma omega river stone cloud light "
    "def return import class yield lambda 0 1 2 3 4 5 6 7 8 9 ü é 漢字 — "
).split()


def _docs(n: int, seed: int, prefix: str = "") -> list[str]:
    rng = random.Random(seed)
    return [
        prefix + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) + ("\n" if i % 3 else "")
        for i in range(n)
    ]


def _jsonl(path, texts, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({field: t, "id": 1}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _read_docs(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix, mmap=True)
    return [ds[i].tolist() for i in range(len(ds))]


def test_roundtrip_jsonl_workers_and_noop(work, tok):
    texts = _docs(300, 0)
    texts.insert(5, "")  # empty documents are skipped
    src = _jsonl(work / "rt.jsonl", texts)
    m1 = prepare(src, str(work / "rt1"), tok, num_workers=1, progress=False)
    want = [tok.tokenize(t) + [tok.eod] for t in texts if t.strip()]
    assert _read_docs(str(work / "rt1")) == want
    assert m1["documents"] == len(want) and m1["tokens"] == sum(map(len, want)) and not m1["skipped"]
    assert m1["tokenizer"]["sha256"] == tok.sha256 and m1["dtype"] == "uint16"
    # Parallel workers give byte-identical output.
    prepare(src, str(work / "rt2"), tok, num_workers=2, progress=False)
    for ext in (".bin", ".idx"):
        assert (work / f"rt1{ext}").read_bytes() == (work / f"rt2{ext}").read_bytes()
    # Re-running is a no-op; a changed source rebuilds.
    mtime = os.stat(work / "rt1.bin").st_mtime_ns
    again = prepare(src, str(work / "rt1"), tok, progress=False)
    assert again["skipped"] and os.stat(work / "rt1.bin").st_mtime_ns == mtime
    _jsonl(work / "rt.jsonl", texts[:10])
    m3 = prepare(src, str(work / "rt1"), tok, progress=False)
    assert not m3["skipped"] and m3["documents"] == 9
    assert not [p for p in os.listdir(work) if ".tmp." in p]


def test_readers_formats(work, tok):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _docs(40, 1)
    want = [tok.tokenize(t) + [tok.eod] for t in texts]
    d = work / "fmt"
    d.mkdir()
    pq.write_table(pa.table({"content": texts}), d / "a.parquet")
    (d / "b.json").write_text(json.dumps([{"content": t} for t in texts]))
    import gzip

    with gzip.open(d / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"content": t}) + "\n" for t in texts)
    ds = datasets.Dataset.from_dict({"content": texts})
    ds.save_to_disk(str(work / "saved"))
    arrow_file = [f for f in os.listdir(work / "saved") if f.endswith(".arrow")][0]
    for name, src in (
        ("parquet", d / "a.parquet"),
        ("json", d / "b.json"),
        ("gz", d / "c.jsonl.gz"),
        ("saved", work / "saved"),
        ("arrow", work / "saved" / arrow_file),
    ):
        prepare(str(src), str(work / f"fmt_{name}"), tok, text_field="content", progress=False)
        assert _read_docs(str(work / f"fmt_{name}")) == want, name
    # A directory of files: sorted by path, all formats together.
    prepare(str(d), str(work / "fmt_dir"), tok, text_field="content", progress=False)
    assert _read_docs(str(work / "fmt_dir")) == want * 3
    # Plain text directory: one document per file.
    t = work / "txt"
    (t / "sub").mkdir(parents=True)
    (t / "1.txt").write_text(texts[0])
    (t / "sub" / "2.md").write_text(texts[1])
    prepare(str(t), str(work / "fmt_txt"), tok, progress=False)
    assert _read_docs(str(work / "fmt_txt")) == want[:2]


def test_interrupted_prepare_leaves_nothing_complete(work, tok, monkeypatch):
    import grow_megatron.data.prepare as P

    src = _jsonl(work / "int.jsonl", _docs(600, 2))
    real = P._tokenized_batches

    def boom(*a, **k):
        it = real(*a, **k)
        yield next(it)
        raise KeyboardInterrupt

    rechunk = P._rechunk
    monkeypatch.setattr(P, "_rechunk", lambda b: rechunk(b, max_docs=50))  # several batches
    monkeypatch.setattr(P, "_tokenized_batches", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, str(work / "int"), tok, progress=False)
    assert not is_complete(str(work / "int")) and read_manifest(str(work / "int")) is None
    assert not any(p.startswith("int.") and (p.endswith((".bin", ".idx")) or ".tmp." in p) for p in os.listdir(work))
    monkeypatch.setattr(P, "_tokenized_batches", real)
    (work / "int.bin.tmp.99999").write_bytes(b"left by a killed run")  # e.g. after SIGKILL
    assert not prepare(src, str(work / "int"), tok, progress=False)["skipped"]
    assert not (work / "int.bin.tmp.99999").exists()
    assert is_complete(str(work / "int"))


@pytest.fixture(scope="module")
def mixture(work, tok):
    """Three datasets whose documents are told apart by their first word."""
    paths = []
    for k, word in enumerate(("AAA", "BBB", "CCC")):
        paths.append(_jsonl(work / f"mix{k}.jsonl", _docs(150 + 50 * k, 10 + k, prefix=word + " ")))
    return paths


def test_mixture_proportions(work, mixture):
    weights = [0.5, 0.3, 0.2]
    cfg = DataConfig(
        datasets=[DatasetSpec(path=p, weight=w) for p, w in zip(mixture, weights)],
        cache_dir=str(work / "cache"),
        split="95,5,0",
    )
    n = 10_000
    train, valid = build_datasets(cfg, seq_length=32, seed=3, train_samples=n, valid_samples=100, progress=False)
    assert len(train) >= n and len(valid) >= 100
    ids = np.array([train[i]["dataset_id"] for i in range(n)])
    for k, w in enumerate(weights):
        # Bound: 4 standard deviations of a binomial(n, w) count (megatron's blending is in fact
        # deterministic and far tighter than this).
        sigma = math.sqrt(n * w * (1 - w))
        assert abs((ids == k).sum() - n * w) <= 4 * sigma, (k, (ids == k).sum())
    # The samples do come from the dataset they claim.
    tok = build_tokenizer(cfg)
    marks = {0: "AAA", 1: "BBB", 2: "CCC"}
    for i in range(0, 200, 7):
        text = tok.detokenize(train[i]["tokens"].tolist())
        others = set(marks.values()) - {marks[int(train[i]["dataset_id"])]}
        assert not any(o in text for o in others)


def test_same_seed_same_order_resume_and_dp_independence(work, mixture):
    def cfg(cache):
        return DataConfig(
            datasets=[DatasetSpec(path=mixture[0], weight=2), DatasetSpec(path=mixture[1], weight=1)],
            cache_dir=str(work / cache),
        )

    kw = dict(seq_length=16, seed=7, train_samples=64 * 20, valid_samples=8, progress=False)
    a, _ = build_datasets(cfg("cache_a"), **kw)
    b, _ = build_datasets(cfg("cache_b"), **kw)  # fresh caches: built twice from scratch
    c, _ = build_datasets(cfg("cache_a"), **kw)  # "resume": rebuilt from the cached indices
    d, _ = build_datasets(cfg("cache_a"), **dict(kw, seed=8))
    gbs = 16
    for step in (0, 5, 19):
        ref = get_microbatches(a, step=step, global_batch_size=gbs, micro_batch_size=gbs, dp_rank=0, dp_size=1)[0]
        for other in (b, c):
            got = get_microbatches(other, step=step, global_batch_size=gbs, micro_batch_size=4, dp_rank=0, dp_size=1)
            assert all((ref[k] == np.concatenate([m[k] for m in got])).all() for k in ref)
        # The global batch is the same whatever the DP layout and micro-batch size.
        for dp, mbs in ((2, 2), (4, 1), (4, 4), (8, 2)):
            parts = [
                m["tokens"]
                for r in range(dp)
                for m in get_microbatches(
                    a, step=step, global_batch_size=gbs, micro_batch_size=mbs, dp_rank=r, dp_size=dp
                )
            ]
            assert (np.concatenate(parts) == ref["tokens"].numpy()).all()
        other = get_microbatches(d, step=step, global_batch_size=gbs, micro_batch_size=gbs)[0]
        assert not (other["tokens"] == ref["tokens"]).all()
    assert sample_indices(step=3, global_batch_size=8, dp_rank=1, dp_size=2) == [28, 29, 30, 31]
    assert sample_indices(step=3, global_batch_size=8, dp_rank=0, dp_size=2, length=26) == [24, 25, 0, 1]
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        get_microbatches(a, step=0, global_batch_size=10, micro_batch_size=4)


def test_default_config_builds_and_decodes_corpus(tmp_path):
    from grow_megatron.data.corpus import iter_default_corpus

    cfg = from_dict(DataConfig, {}, "data").validate()
    assert cfg.is_default()
    cfg.cache_dir = str(tmp_path)
    train, valid = build_datasets(cfg, seq_length=128, seed=1, train_samples=500, valid_samples=10, progress=False)
    assert len(train) >= 500 and len(valid) >= 10
    tok = build_tokenizer(cfg)
    assert tok.vocab_size == 4096 and tok.eod == 0
    corpus = "\n".join(d["text"] for d in iter_default_corpus())
    mb = get_microbatches(train, step=2, global_batch_size=4, micro_batch_size=2, dp_rank=0, dp_size=1)
    assert mb[0]["tokens"].shape == (2, 128) and mb[0]["loss_mask"].dtype.is_floating_point
    assert (mb[0]["labels"][:, :-1] == mb[0]["tokens"][:, 1:]).all() and (mb[0]["loss_mask"] == 1).all()
    assert (mb[0]["position_ids"][0] == np.arange(128)).all()
    for row in mb[0]["tokens"]:
        pieces = [p for p in tok.detokenize(row.tolist()).split("<|endoftext|>") if len(p) > 30]
        assert pieces and all(p[1:-1] in corpus for p in pieces)
    m = read_manifest(os.path.join(tmp_path, "prepared", os.listdir(tmp_path / "prepared")[0], "data"))
    assert m["documents"] > 500 and m["tokens"] > 1_000_000


def test_tokenizer_save_loads_in_transformers(tmp_path, tok):
    from transformers import PreTrainedTokenizerFast

    tok.save(str(tmp_path))
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    text = "def f(x):\n    return x ** 2  # square — ü"
    assert hf.encode(text, add_special_tokens=False) == tok.tokenize(text)
    assert hf.eos_token_id == tok.eod and hf.decode(tok.tokenize(text)) == text
    again = load_tokenizer(str(tmp_path))
    assert again.sha256 == tok.sha256 and again.eod == tok.eod


def test_trained_tokenizer_from_config(work, mixture):
    cfg = DataConfig(
        datasets=[DatasetSpec(path=mixture[0])],
        tokenizer_vocab_size=320,
        tokenizer_train_chars=20_000,
        cache_dir=str(work / "cache_tok"),
    )
    t1 = build_tokenizer(cfg)
    assert t1.vocab_size <= 320 and t1.detokenize(t1.tokenize("AAA alpha")) == "AAA alpha"
    assert build_tokenizer(cfg).sha256 == t1.sha256  # cached, not retrained
    train, _ = build_datasets(cfg, seq_length=8, seed=0, train_samples=10, valid_samples=2, progress=False)
    assert int(train[0]["tokens"].max()) < t1.vocab_size


def test_preset_mixture_config(tmp_path):
    names = ["fineweb-edu", "cosmopedia-v2", "python-edu", "open-web-math"]
    cfg = from_dict(
        DataConfig, {"preset": "smollm-corpus", "datasets": [{"name": n, "path": f"/d/{n}"} for n in names]}, "data"
    ).validate()
    assert cfg.weights() == [0.70, 0.15, 0.09, 0.06]
    with pytest.raises(ConfigError, match=r"data.datasets = .*missing: open-web-math"):
        from_dict(
            DataConfig, {"preset": "smollm-corpus", "datasets": [{"name": n, "path": "/x"} for n in names[:3]]}
        ).validate()


def test_split_forms():
    from grow_megatron.config.data import split_vector

    assert split_vector("98,2,0") == pytest.approx([0.98, 0.02, 0.0])
    assert split_vector("98,2") == pytest.approx([0.98, 0.02, 0.0])
    cfg = from_dict(DataConfig, {"split": [0.9, 0.1]}, "data").validate()
    assert split_vector(cfg.split) == pytest.approx([0.9, 0.1, 0.0])


def test_hf_source_local_hub_layout(work, tok):
    """`hf:REPO[:CONFIG]` goes through datasets.load_dataset, as for a hub dataset; tested on a
    local directory laid out like a hub repository (README configs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = work / "hubrepo"
    (repo / "alpha").mkdir(parents=True)
    (repo / "beta").mkdir()
    a, b = _docs(30, 21, "alpha "), _docs(20, 22, "beta ")
    pq.write_table(pa.table({"text": a}), repo / "alpha" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": b, "n": list(range(len(b)))}), repo / "beta" / "train-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: alpha\n  data_files: alpha/*.parquet\n"
        "- config_name: beta\n  data_files: beta/*.parquet\n---\n# test repo\n"
    )
    for cfg_name, texts in (("alpha", a), ("beta", b)):
        m = prepare(f"hf:{repo}:{cfg_name}", str(work / f"hub_{cfg_name}"), tok, progress=False)
        assert _read_docs(str(work / f"hub_{cfg_name}")) == [tok.tokenize(t) + [tok.eod] for t in texts]
        assert m["source"] == f"hf:{repo}:{cfg_name}"
    with pytest.raises(ConfigError, match="hf: needs a hub dataset name ORG/NAME or an existing local directory"):
        prepare("hf:/no/such/dir", str(work / "hub_x"), tok, progress=False)


def test_every_config_field_documented():
    import dataclasses

    from grow_megatron.config.base import field_docs

    for cls in (DataConfig, DatasetSpec):
        docs = field_docs(cls)
        assert {f.name for f in dataclasses.fields(cls)} <= set(docs), cls


def test_cli_prepare_config_and_inspect(work, mixture, capsys):
    from grow_megatron.cli import main

    run = work / "run.yaml"
    run.write_text(
        f"name: t\ndata:\n  cache_dir: {work / 'cache_cli'}\n  datasets:\n    - {{path: {mixture[0]}, weight: 1}}\n"
    )
    assert main(["data", "prepare", "--config", str(run), "--no-progress", "--workers", "1"]) == 0
    first = capsys.readouterr().out
    assert "documents" in first and "built" in first
    assert main(["data", "prepare", "--config", str(run), "--no-progress"]) == 0
    assert "ready" in capsys.readouterr().out
    prefix = first.split(":")[0]
    assert main(["data", "inspect", prefix, "--samples", "1"]) == 0
    assert "AAA" in capsys.readouterr().out
