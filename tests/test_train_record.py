"""`grow_megatron.cli.train_record` (the GPU session's train_short step): a real grown run
recorded to JSON. The record's growths and losses are the run's own records (events.jsonl,
metrics.jsonl), and its per-depth summary covers every step."""

import json
import os
from pathlib import Path

from grow_megatron.bench.train_record import record_training
from grow_megatron.config.rundir import RunDir, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
# tools/gpu_session.sh's smoke arguments for train_short: 12 layers grown 4 -> 8 -> 12 in 12 steps.
SMALL = [
    "model.hidden_size=64",
    "model.ffn_hidden_size=160",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.seq_length=64",
    "train.steps=12",
    "growth.grow_steps=8",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.eval_interval=6",
    "optim.warmup_steps=2",
    "optim.decay_steps=2",
    "checkpoint.save_at_growth=false",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def test_the_record_holds_the_runs_growths_losses_and_stages(tmp_path, one_thread):
    run_dir = tmp_path / "run"
    out = tmp_path / "train_short.json"
    overrides = SMALL + [f"run_dir={run_dir}"]
    returned = record_training(str(ROOT / "examples" / "tiny_lidas.yaml"), overrides, str(out), [], "train_record")
    record = json.loads(out.read_text())  # what comes back from the device: the file, not the object
    assert record == json.loads(json.dumps(returned))
    assert record["completed"] is True
    rd = RunDir(str(run_dir))
    assert [(g["old_depth"], g["new_depth"]) for g in record["growths"]] == [(4, 8), (8, 12)]
    assert record["growths"] == [e.to_dict() for e in rd.growth_events()]
    metrics = {m["step"]: m for m in read_jsonl(rd.metrics) if "loss" in m}
    assert [s["step"] for s in record["steps"]] == list(range(12))
    assert all(s["loss"] == metrics[s["step"]]["loss"] for s in record["steps"])
    stages = record["stages"]
    assert [s["depth"] for s in stages] == [4, 8, 12]
    assert sum(s["steps"] for s in stages) == 12
    assert [s["first_step"] for s in stages] == [0] + [g["step"] for g in record["growths"]]
    assert os.path.isdir(rd.checkpoints)
