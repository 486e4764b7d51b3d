"""The real lm-evaluation-harness on our export scores what `grow-megatron eval` scores.

A tiny model is trained through two growths, exported with `to-hf`, its primitive tasks exported
with `export_tasks`, and `lm_eval --model hf` (the installed harness, as a user runs it) evaluates
them; accuracies must be equal and every per-choice log-likelihood equal to ours within fp32
rounding. Bound: both sides run the same fp32 Llama on the same token ids but batch and pad
differently (lm-eval pads each batch to its longest request and sorts by length), so a log-
likelihood summed over a few tokens differs by a few fp32 ulps of values around 10-50: 2e-4 is
about a hundred ulps there, while one wrong token (a BOS added, a space moved) changes a score
by 1 or more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

from engine_helpers import micro_config  # noqa: E402
from grow_megatron.convert import to_hf  # noqa: E402
from grow_megatron.eval import lm_eval_adapter as A  # noqa: E402
from grow_megatron.eval import primitives as P  # noqa: E402
from grow_megatron.eval import scoring as S  # noqa: E402
from grow_megatron.training.loop import train  # noqa: E402

TASKS = ["varassign_basic", "copying_words"]
N = 6
LOGLIK_ATOL = 2e-4


def _lm_eval(export: Path, tasks_dir: Path, out: Path) -> subprocess.CompletedProcess:
    # Without the rendezvous variables the in-process training left behind (accelerate would
    # otherwise join that finished process group's port).
    rendezvous = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={export},dtype=float32",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--include_path",
        str(tasks_dir),
        "--tasks",
        ",".join(A.TASK_PREFIX + t for t in TASKS),
        "--log_samples",
        "--output_path",
        str(out),
    ]
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)


def _samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"samples_{A.TASK_PREFIX}{task}_*.jsonl"))
    assert files, f"lm-eval wrote no samples for {task} under {out}"
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def test_real_lm_eval_matches_our_scores(tmp_path):
    cfg = micro_config(tmp_path / "run")
    train(cfg)
    export = tmp_path / "hf"
    to_hf(cfg.run_dir, str(export), progress=False)
    tasks_dir = tmp_path / "tasks"
    A.export_tasks(tasks_dir, TASKS, n=N, seed=0)

    proc = _lm_eval(export, tasks_dir, tmp_path / "lm_eval_out")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    scorer = S.hf_scorer(model, tokenizer)
    for task in TASKS:
        examples = A.read_jsonl(tasks_dir / f"{task}.jsonl")
        assert examples == P.generate(task, N, seed=0)
        ours = scorer.score(examples)  # [example][choice] summed log-likelihood
        rows = _samples(tmp_path / "lm_eval_out", task)
        assert [r["doc_id"] for r in rows] == list(range(N))
        theirs = [[float(resp[0][0]) for resp in r["resps"]] for r in rows]
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert len(a) == len(b) == len(examples[i].choices)
            assert max(abs(x - y) for x, y in zip(a, b)) <= LOGLIK_ATOL, (task, i, a, b)
        our_acc = [int(S.predictions([s])[0] == ex.answer) for s, ex in zip(ours, examples)]
        assert [int(r["acc"]) for r in rows] == our_acc, task
