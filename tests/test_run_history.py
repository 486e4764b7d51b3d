"""A run keeps its history when trained further: growths where they happened, an explicit LR
policy (optim.on_extend), cumulative tokens/FLOPs that go on from the checkpoint, paths that
work from another directory, and an offline-grown run that carries its source's records."""

import itertools
import json
import math
import os
import shutil

import pytest

from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import load_run_config
from grow_megatron.config.rundir import read_jsonl
from grow_megatron.data.assets import default_tokenizer_path
from grow_megatron.data.corpus import iter_default_corpus
from grow_megatron.engine.checkpoint import latest_checkpoint, read_meta
from grow_megatron.growth import flops as F
from grow_megatron.training.loop import train

PEAK, WARMUP, DECAY, STEPS, NEW = 3e-3, 2, 3, 12, 17
REAL_GROWTHS = "4->8 at step 2, 8->12 at step 5"


CONFIG = """\
run_dir: runs/first
data:
  tokenizer: tok/tokenizer.json
  datasets: [{path: data/docs.jsonl}]
  split: '90,10'
model: {preset: tiny, num_layers: 12, hidden_size: 64, ffn_hidden_size: 160, num_attention_heads: 4,
        num_query_groups: 2, seq_length: 32}
growth: {operator: lidas, block_size: 4}   # grow_steps: train.steps - decay_steps = 9
train: {steps: 12, global_batch_size: 4, micro_batch_size: 2, eval_interval: 6, eval_batches: 2}
optim: {lr: 3.0e-3, warmup_steps: 2, decay_steps: 3}
logging: {progress: false, tensorboard: false}
checkpoint: {save_at_growth: false}
"""


def _config_dir(root):
    """A project directory whose config names its tokenizer and data by relative paths (the
    shape of engine_helpers.micro_overrides: a few seconds on CPU)."""
    cfg_dir = root / "project"
    (cfg_dir / "tok").mkdir(parents=True)
    shutil.copy(default_tokenizer_path(), cfg_dir / "tok" / "tokenizer.json")
    (cfg_dir / "data").mkdir()
    with open(cfg_dir / "data" / "docs.jsonl", "w") as f:
        for doc in itertools.islice(iter_default_corpus(), 300):
            f.write(json.dumps({"text": doc["text"]}) + "\n")
    (cfg_dir / "run.yaml").write_text(CONFIG)
    return cfg_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 12-step 4 -> 8 -> 12 run, trained from its config file in another directory."""
    root = tmp_path_factory.mktemp("history")
    _config_dir(root)
    work = root / "work"
    work.mkdir()
    old = os.getcwd()
    os.chdir(work)
    try:
        cfg = load_run_config("../project/run.yaml")
        res = train(cfg)
    finally:
        os.chdir(old)
    return root, cfg, res


def _copy_run(finished, tmp_path):
    root, cfg, _ = finished
    run = tmp_path / "run"
    shutil.copytree(cfg.run_dir, run)
    return run


def _train_more(run, monkeypatch, tmp_path, stop_at, *overrides):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)  # paths come from the saved config, not from here
    cfg = load_run_config(str(run / "config.yaml"), [f"run_dir={run}", *overrides])
    return train(cfg, stop_at=stop_at)


def _shape(num_layers: int) -> ModelConfig:
    """micro_overrides' shape at `num_layers` layers, with the embedded tokenizer's vocab."""
    return ModelConfig(
        num_layers=num_layers,
        hidden_size=64,
        ffn_hidden_size=160,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=4096,
        seq_length=32,
    )


def _metrics(run):
    return {r["step"]: r for r in read_jsonl(os.path.join(run, "metrics.jsonl"))}


def test_run_config_is_saved_absolute(finished):
    root, cfg, res = finished
    assert res.end_step == STEPS and [g.step for g in res.growths] == [2, 5]
    saved = load_run_config(os.path.join(cfg.run_dir, "config.yaml"))
    assert saved.run_dir == str(root / "work" / "runs" / "first")
    assert saved.data.tokenizer == str(root / "project" / "tok" / "tokenizer.json")
    assert saved.data.datasets[0].path == str(root / "project" / "data" / "docs.jsonl")


def test_cumulative_tokens_and_flops_per_step(finished):
    """Every step's record counts the tokens and docs/method.md §6 FLOPs trained so far, each step at the
    depth it trained at (the record's own depth column)."""
    _, cfg, _ = finished
    recs = _metrics(cfg.run_dir)
    shape = _shape(12)  # micro_overrides' shape, embedded vocab
    tokens_per_step = 4 * 32
    flops = tokens = 0
    for step in range(STEPS):
        L = recs[step]["depth"]
        per_token = 6 * (L * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 160) + 4096 * 64) + 12 * L * 32 * 64
        flops += tokens_per_step * per_token
        tokens += tokens_per_step
        assert recs[step]["tokens"] == tokens and recs[step]["flops"] == flops, step
    assert flops == F.grown_flops(shape, F.prop_plan(12, 4, 9), STEPS, tokens_per_step).flops


def _old_lr(step):
    """The finished run's schedule (warmup 2, decay over the last 3 of 12 steps, 1-sqrt)."""
    if step < WARMUP:
        return PEAK * (step + 1) / WARMUP
    start = STEPS - DECAY
    return PEAK if step < start else PEAK * (1 - math.sqrt((step - start) / DECAY))


@pytest.mark.parametrize("policy", ["continue", "constant", "rewarmup"])
def test_extend_a_finished_run(finished, tmp_path, monkeypatch, capsys, policy):
    run = _copy_run(finished, tmp_path)
    before = _metrics(run)
    assert before[STEPS - 1]["lr"] == pytest.approx(_old_lr(STEPS - 1), rel=1e-12)
    extra = ["optim.rewarmup_steps=2"] if policy == "rewarmup" else []
    res = _train_more(run, monkeypatch, tmp_path, STEPS + 2, f"train.steps={NEW}", f"optim.on_extend={policy}", *extra)
    out = capsys.readouterr().out
    assert res.start_step == STEPS and res.end_step == STEPS + 2
    last = _old_lr(STEPS - 1)
    if policy == "continue":  # decay progress 2/3 at step 11, stretched to reach 1 at step 17
        p = [2 / 3 + (1 / 3) * k / 6 for k in (1, 2)]
        want = [PEAK * (1 - math.sqrt(x)) for x in p]
    elif policy == "constant":
        want = [last, last]
    else:  # warmup from the last LR back to the peak over 2 steps
        want = [last + (PEAK - last) / 2, PEAK]
    recs = _metrics(run)
    assert [recs[s]["lr"] for s in (12, 13)] == pytest.approx(want, rel=1e-12)
    assert f"optim.on_extend={policy}" in out and f"train.steps 12 -> {NEW}" in out
    # The plan printed is the one followed: the real growths, none to come (the new length
    # alone would have planned growths at steps 2 and 7).
    assert f"done: {REAL_GROWTHS}; to come: none (final depth 12)" in out
    meta = read_meta(latest_checkpoint(os.path.join(run, "checkpoints")))
    assert [g["step"] for g in meta["growths"]] == [2, 5] and meta["stage_steps"] == [2, 3, 4]
    assert meta["train_steps"] == NEW and meta["lr_schedule"]["policy"] == policy
    # The compute counts go on from the checkpoint's: two more steps at depth 12.
    per_step = 4 * 32 * F.model_flops_per_token(_shape(12))
    assert recs[13]["flops"] == before[11]["flops"] + 2 * per_step
    assert recs[13]["tokens"] == before[11]["tokens"] + 2 * 4 * 32
    if policy == "continue":
        # Resuming the extended run keeps the extended schedule (it is in meta.json).
        _train_more(run, monkeypatch, tmp_path, STEPS + 3, f"train.steps={NEW}", "optim.on_extend=constant")
        assert _metrics(run)[14]["lr"] == pytest.approx(PEAK * (1 - math.sqrt(2 / 3 + (1 / 3) * 3 / 6)), rel=1e-12)


def test_offline_grown_run_carries_its_history(finished, tmp_path, monkeypatch, capsys):
    """README's `grow` -> `train --set train.steps=...` path: the grown run's records start at
    step 0 of the source run, and its plan line shows every growth as it happened."""
    from grow_megatron.cli import main as cli_main

    _, cfg, _ = finished
    out = tmp_path / "grown"
    assert cli_main(["grow", cfg.run_dir, "--operator", "midas", "--block-size", "4", "--out", str(out)]) == 0
    source = _metrics(cfg.run_dir)
    assert _metrics(out) == source
    events = read_jsonl(os.path.join(out, "events.jsonl"))
    assert [(e["step"], e["new_depth"], bool(e.get("offline"))) for e in events] == [
        (2, 8, False),
        (5, 12, False),
        (12, 16, True),
    ]
    capsys.readouterr()
    _train_more(out, monkeypatch, tmp_path, None, "train.steps=14")
    text = capsys.readouterr().out
    assert f"done: {REAL_GROWTHS}, 12->16 at step 12 (offline); to come: none (final depth 16)" in text
    assert "optim.on_extend=continue" in text
    recs = _metrics(out)
    assert sorted(recs) == list(range(14)) and recs[12]["depth"] == 16
    per_step = 4 * 32 * F.model_flops_per_token(_shape(16))
    assert recs[13]["flops"] == source[11]["flops"] + 2 * per_step
    events = read_jsonl(os.path.join(out, "events.jsonl"))
    assert [e["step"] for e in events if e["kind"] == "growth"] == [2, 5, 12]


def _by_hand(xs, ys, x):
    """Linear interpolation, written out: the segment [xs[i], xs[i+1]] that holds x."""
    if x < xs[0] or x > xs[-1]:
        return None
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[-1]


def test_compare_runs_loss_at_equal_flops(finished, tmp_path, monkeypatch, capsys):
    """A grown and a static run: the table's losses at common FLOP budgets are the hand
    interpolation of each run's records; the figure and the markdown/JSON tables are written."""
    from grow_megatron.cli import main as cli_main

    root, cfg, _ = finished
    monkeypatch.chdir(root / "work")
    static = load_run_config("../project/run.yaml", ["run_dir=runs/static", "growth.operator=none"])
    train(static)
    out = tmp_path / "cmp"
    assert cli_main(["compare-runs", cfg.run_dir, static.run_dir, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "loss_at_flops.json").read_text())
    assert table["runs"] == ["first", "static"]
    runs = {
        name: [_metrics(d)[s] for s in range(STEPS)] for name, d in (("first", cfg.run_dir), ("static", static.run_dir))
    }
    common = min(recs[-1]["flops"] for recs in runs.values())
    assert common == runs["first"][-1]["flops"] < runs["static"][-1]["flops"]  # growing is cheaper
    assert [row["flops"] for row in table["rows"]] == pytest.approx([common * k / 5 for k in range(1, 6)])
    for row in table["rows"]:
        for name, recs in runs.items():
            x = [r["flops"] for r in recs]
            assert row[name]["loss"] == pytest.approx(_by_hand(x, [r["loss"] for r in recs], row["flops"]), rel=1e-12)
            ev = [r for r in recs if "val_loss" in r]
            want = _by_hand([r["flops"] for r in ev], [r["val_loss"] for r in ev], row["flops"])
            assert (
                (row[name]["val_loss"] is None)
                if want is None
                else row[name]["val_loss"] == pytest.approx(want, rel=1e-12)
            )
    # Both runs are evaluated at steps 5 and 11: at the last budget (the grown run's total) the
    # grown run has its held-out loss, and the static one (more FLOPs per step) one too.
    assert table["rows"][-1]["first"]["val_loss"] == pytest.approx(runs["first"][-1]["val_loss"], rel=1e-12)
    md = (out / "loss_at_flops.md").read_text()
    last = table["rows"][-1]
    assert f"{last['first']['loss']:.4f}" in md and f"{last['first']['loss']:.4f}" in printed
    assert (out / "compare_runs.png").stat().st_size > 10_000


def test_flops_of_a_run_directory(finished, capsys):
    """`flops RUN_DIR` reads the vocabulary from the checkpoint and its grown total is what the
    run logged after its last step."""
    from grow_megatron.cli.flops import main as flops_main

    _, cfg, _ = finished
    out = os.path.join(str(cfg.run_dir), "..", "flops.json")
    assert flops_main([cfg.run_dir, "--json", out]) == 0
    assert "vocab=4096 (the embedding of " in capsys.readouterr().out
    with open(out) as f:
        d = json.load(f)
    assert d["grown"]["flops"] == _metrics(cfg.run_dir)[STEPS - 1]["flops"]


def test_compute_counts_survive_an_interrupted_run(finished, tmp_path):
    """Stopped at step 4 (between the growths) and resumed: the same tokens and FLOPs per step as
    the run that went through in one go (the counts come from the checkpoint, not memory)."""
    _, cfg, _ = finished
    run = str(tmp_path / "interrupted")
    saved = str(os.path.join(cfg.run_dir, "config.yaml"))
    train(load_run_config(saved, [f"run_dir={run}"]), stop_at=4)
    train(load_run_config(saved, [f"run_dir={run}"]))
    got, want = _metrics(run), _metrics(cfg.run_dir)
    assert sorted(got) == list(range(STEPS))
    assert [(got[s]["tokens"], got[s]["flops"]) for s in range(STEPS)] == [
        (want[s]["tokens"], want[s]["flops"]) for s in range(STEPS)
    ]
