"""Run lm-evaluation-harness on an exported model with local task data (no hub access).

`export_tasks(DIR, tasks)` writes, per reasoning primitive, `<task>.jsonl` (one MCExample per
line) and `gm_<task>.yaml` (an lm-eval `multiple_choice` task reading that file), plus
`gm_primitives.yaml`, a group averaging them. Then:

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf \\
        --model_args pretrained=HF_DIR,dtype=float32 --include_path DIR --tasks gm_primitives

The YAML reproduces `grow_megatron.eval.scoring` exactly: the 5 shots are already inside
each prompt (num_fewshot 0), each choice carries its leading space (target_delimiter ""),
and lm-eval's `acc` is the same summed log-likelihood argmax. See docs/eval.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from grow_megatron.eval import primitives
from grow_megatron.eval.tasks import MCExample

TASK_PREFIX = "gm_"
GROUP = "gm_primitives"


def task_config(task: str, data_file: str | Path) -> dict:
    """The lm-eval task YAML (as a dict) for one primitive stored at data_file."""
    return {
        "task": TASK_PREFIX + task,
        # The generic `json` builder of `datasets` reads a local file: nothing is downloaded.
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        # Bare field names: lm-eval returns doc[field] unchanged (no Jinja rendering, which
        # would turn the choices into a string).
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": float(primitives.TEMPLATE_VERSION), "template_version": primitives.TEMPLATE_VERSION},
    }


def group_config(tasks: Sequence[str]) -> dict:
    """An lm-eval group that reports the unweighted mean accuracy over `tasks` (Table 6's Mean)."""
    return {
        "group": GROUP,
        "task": [TASK_PREFIX + t for t in tasks],
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": False}],
        "metadata": {"version": float(primitives.TEMPLATE_VERSION)},
    }


def example_to_doc(ex: MCExample, seed: int, index: int) -> dict:
    return {
        "prompt": ex.prompt,
        "choices": list(ex.choices),
        "answer": ex.answer,
        "task": ex.task,
        "seed": seed,
        "index": index,
        "template_version": primitives.TEMPLATE_VERSION,
    }


def doc_to_example(doc: dict) -> MCExample:
    return MCExample(
        prompt=doc["prompt"], choices=tuple(doc["choices"]), answer=int(doc["answer"]), task=doc.get("task", "")
    )


def write_jsonl(path: str | Path, examples: Sequence[MCExample], seed: int = 0) -> Path:
    path = Path(path)
    with path.open("w") as fh:
        for i, ex in enumerate(examples):
            fh.write(json.dumps(example_to_doc(ex, seed, i)) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[MCExample]:
    with Path(path).open() as fh:
        return [doc_to_example(json.loads(line)) for line in fh if line.strip()]


def export_tasks(
    out_dir: str | Path, tasks: Sequence[str], n: int, seed: int = 0, config: primitives.PrimitivesConfig | None = None
) -> list[Path]:
    """Write jsonl data + lm-eval YAML for each task and the group YAML; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        data = write_jsonl(out / f"{task}.jsonl", primitives.generate(task, n, seed, config), seed)
        cfg = out / f"{TASK_PREFIX}{task}.yaml"
        cfg.write_text(yaml.safe_dump(task_config(task, data), sort_keys=False, allow_unicode=True))
        written += [data, cfg]
    if tasks:
        group = out / f"{GROUP}.yaml"
        group.write_text(yaml.safe_dump(group_config(tasks), sort_keys=False))
        written.append(group)
    return written


LM_EVAL_INSTALL = "pip install 'lm-eval[hf]'"
"""What runs the printed command: lm-evaluation-harness with its Hugging Face model backend."""


def lm_eval_command(
    model_dir: str,
    include_path: str | Path,
    tasks: str = GROUP,
    batch_size: int = 16,
    dtype: str = "float32",
    device: str = "cpu",
    add_bos: bool = False,
) -> str:
    """The shell command that evaluates an exported HF model (`convert to-hf`'s output, not a
    native checkpoint) on the exported tasks, offline, on `device`, scoring what `grow-megatron
    eval` scores: `add_bos_token` is passed explicitly, because lm-eval's default (None) lets the
    tokenizer decide, and a tokenizer whose post-processor prepends BOS (Llama's) would get one."""
    return (
        f"HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf "
        f"--model_args pretrained={model_dir},dtype={dtype},add_bos_token={add_bos} "
        f"--include_path {include_path} --tasks {tasks} --device {device} --batch_size {batch_size}"
    )
