"""What a researcher reads of a run: plain progress lines in a redirected log, the data and its
size at the start, held-out loss lines, a final line with the steps this command ran, and the
same scalars in Weights & Biases (offline) as in metrics.jsonl."""

import glob
import json
import os
import struct

import pytest

from engine_helpers import micro_overrides
from grow_megatron.cli import main as cli_main
from grow_megatron.config.rundir import read_jsonl
from grow_megatron.data.corpus import iter_default_corpus
from grow_megatron.data.tokenizer import load_tokenizer


def wandb_history(run_file: str) -> list[dict]:
    """The history rows of a W&B run file (run-ID.wandb): a LevelDB-style log of protobuf
    Records after a 7-byte header (':W&B', magic, version); records are split into fragments
    (full/first/middle/last) within 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(run_file, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", data[:7]
    rows, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
                )
    return rows


def test_run_log_lines_and_wandb(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb_dir").mkdir()
    run = tmp_path / "run"
    (tmp_path / "run.yaml").write_text("model: {preset: tiny}\n")
    args = ["train", str(tmp_path / "run.yaml")]
    for item in micro_overrides(
        run,
        **{
            "logging.progress": True,
            "logging.wandb": True,
            "logging.print_interval": 5,
            "train.eval_interval": 6,
            "train.eval_batches": 2,
        },
    ):
        args += ["--set", item]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    recs = {r["step"]: r for r in read_jsonl(os.path.join(run, "metrics.jsonl"))}

    # Not a terminal: plain lines every 5 steps and at the end, no carriage-return bar.
    assert "\r" not in out and "\r" not in err
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("step ") and " | loss " in line]
    assert [line.split(" | ")[0] for line in progress] == ["step 5/12", "step 10/12", "step 12/12"]
    assert f"loss {recs[11]['loss']:.4f} | depth 12" in progress[-1]
    # The start names the data and its size; 12 steps x 4 sequences x 32 tokens are trained.
    data_line = next(line for line in lines if line.startswith("data (train split): "))
    docs = [d["text"] for d in iter_default_corpus()]
    train_docs = round(0.98 * len(docs))  # megatron's document-range split of "98,2,0"
    tok = load_tokenizer(None)
    tokens = sum(len(tok.tokenize(text)) + 1 for text in docs[:train_docs])  # + end-of-document
    assert (
        f"the embedded corpus ({train_docs:,} documents, {tokens:,} tokens); the whole run trains 1,536 tokens = "
        f"{1536 / tokens:.3g} epochs" in data_line
    )
    # Held-out loss lines (steps 6 and 12) and the final line with the steps run.
    for step in (5, 11):
        assert f"step {step + 1}/12: held-out loss {recs[step]['val_loss']:.4f}" in out
    assert lines[-1].startswith("done: ran steps 0..12, final depth 12, last loss ")
    assert f"held-out loss {recs[11]['val_loss']:.4f} (step 12)" in lines[-1]

    # W&B, offline: the same scalars as metrics.jsonl, by step; growths as growth/* scalars.
    files = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    history = wandb_history(files[0])
    logged = {row["_step"]: row for row in history}
    for step, rec in recs.items():
        assert logged[step]["train/loss"] == pytest.approx(rec["loss"], rel=1e-12)
        assert logged[step]["train/flops"] == rec["flops"]
    assert logged[11]["eval/loss"] == pytest.approx(recs[11]["val_loss"], rel=1e-12)
    assert [logged[s]["growth/new_depth"] for s in (2, 5)] == [8, 12]

    # Trained further: the final line says which steps this command ran; same W&B run id.
    assert cli_main(args + ["--set", "train.steps=14"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("done: ran steps 12..14, final depth 12")
    run_id = (run / "wandb_id").read_text().strip()
    files = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in files)
