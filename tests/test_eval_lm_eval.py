"""lm-evaluation-harness export: the YAML + jsonl describe exactly our MC examples.

lm_eval itself is not installed here; these tests check the files against the way lm-eval
0.4 builds multiple-choice requests from a task config (context = doc_to_text(doc), one
request per choice with continuation target_delimiter + choice, gold = doc_to_target(doc)).
"""

from __future__ import annotations

import json

import yaml

from grow_megatron.eval import lm_eval_adapter as A
from grow_megatron.eval import primitives as P


def _lm_eval_requests(cfg: dict, doc: dict) -> tuple[list[tuple[str, str]], int]:
    """What lm-eval's ConfigurableTask does with a doc when the config names plain fields."""
    assert cfg["output_type"] == "multiple_choice" and cfg["num_fewshot"] == 0
    ctx = doc[cfg["doc_to_text"]]
    return [(ctx, cfg["target_delimiter"] + c) for c in doc[cfg["doc_to_choice"]]], doc[cfg["doc_to_target"]]


def test_export_roundtrip(tmp_path):
    tasks = list(P.PAPER_TASKS)
    written = A.export_tasks(tmp_path, tasks, n=7, seed=3)
    assert len(written) == 2 * len(tasks) + 1
    for task in tasks:
        cfg = yaml.safe_load((tmp_path / f"gm_{task}.yaml").read_text())
        assert cfg["task"] == f"gm_{task}"
        assert cfg["dataset_path"] == "json"
        data = cfg["dataset_kwargs"]["data_files"][cfg["test_split"]]
        assert data == str((tmp_path / f"{task}.jsonl").resolve())
        docs = [json.loads(line) for line in open(data)]
        examples = P.generate(task, 7, seed=3)
        assert A.read_jsonl(data) == examples
        for doc, ex in zip(docs, examples):
            reqs, gold = _lm_eval_requests(cfg, doc)
            # Byte-identical to what grow_megatron.eval.scoring scores.
            assert reqs == [(ex.prompt, c) for c in ex.choices]
            assert gold == ex.answer
            assert doc["template_version"] == P.TEMPLATE_VERSION
    group = yaml.safe_load((tmp_path / "gm_primitives.yaml").read_text())
    assert group["group"] == "gm_primitives"
    assert group["task"] == [f"gm_{t}" for t in tasks]
    assert group["aggregate_metric_list"][0]["weight_by_size"] is False


def test_cli_export_without_model(tmp_path, capsys):
    from grow_megatron.cli.eval import main

    assert main(["--export-lm-eval", str(tmp_path), "--tasks", "varassign_code", "--n", "3"]) == 0
    assert len(A.read_jsonl(tmp_path / "varassign_code.jsonl")) == 3
    out = capsys.readouterr().out
    assert "lm_eval --model hf" in out and f"--include_path {tmp_path}" in out


def test_command():
    cmd = A.lm_eval_command("/m", "/t", batch_size=8)
    assert cmd.startswith("HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf")
    assert "pretrained=/m,dtype=float32" in cmd and "--tasks gm_primitives" in cmd and "--batch_size 8" in cmd


def test_printed_command_runs_where_the_user_is(tmp_path, capsys, monkeypatch):
    """Issue 25, finding 8: the device the user has (not a hard-coded cuda), the add_bos_token
    that `eval` scores with (lm-eval's default lets the tokenizer decide), lm-eval[hf] named as
    what to install, and for a native checkpoint the `to-hf` export that lm-eval can read."""
    import torch

    from grow_megatron.cli.eval import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--export-lm-eval", str(tmp_path / "t"), "--tasks", "varassign_code", "--n", "2", "--add-bos"]) == 0
    out = capsys.readouterr().out
    assert "--device cpu" in out and "--device cuda" not in out
    assert "add_bos_token=True" in out and "pip install 'lm-eval[hf]'" in out
    assert (
        main(["--export-lm-eval", str(tmp_path / "t2"), "--tasks", "varassign_code", "--n", "2", "--device", "cuda:1"])
        == 0
    )
    assert "--device cuda:1" in capsys.readouterr().out


def test_a_native_model_is_exported_first_in_the_printed_commands(tmp_path, capsys, monkeypatch):
    from grow_megatron.cli import eval as E

    # A native run directory: check_model_dir says so (None); nothing is loaded in this test.
    monkeypatch.setattr(E, "check_model_dir", lambda path, accept: None)
    monkeypatch.setattr(E, "load_model", lambda *a, **k: (_ for _ in ()).throw(SystemExit(0)))
    try:
        E.main(["runs/r/", "--export-lm-eval", str(tmp_path), "--tasks", "varassign_code", "--n", "2"])
    except SystemExit:
        pass
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("grow-megatron convert to-hf runs/r/ runs/r-hf"))
    assert "pretrained=runs/r-hf," in lines[i + 1]
