"""Guards of the training loop against bad numbers: a step with non-finite gradients is skipped
(megatron's found-inf check), a diverged state is never checkpointed, metrics stay valid JSON."""

import json
import math
import os

import pytest
import torch

from engine_helpers import assert_same_tensors, micro_config
from grow_megatron.cli import main as cli_main
from grow_megatron.config.run import load_run_config
from grow_megatron.engine.checkpoint import (
    gather_param_state,
    latest_checkpoint,
    optimizer_step_count,
    read_global_tensors,
    read_meta,
)
from grow_megatron.engine.faults import ENV
from grow_megatron.training.loop import train

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tiny_lidas.yaml")
STATIC = {"train.steps": 6, "growth.operator": "none", "growth.grow_steps": "null", "model.num_layers": 4}


def _state(engine) -> dict:
    """Everything an update changes: weights, fp32 main copies, AdamW moments and step."""
    out = {"adam_step": torch.tensor(optimizer_step_count(engine.optimizer))}
    for name, p in engine.named_parameters():
        out[f"weight.{name}"] = p.detach().clone()
        out.update({f"{k}.{name}": v.clone() for k, v in gather_param_state(engine.optimizer, p).items()})
    return out


def _strict_jsonl(path: str) -> list[dict]:
    """Parse as strict JSON: a bare NaN/Infinity (what json.dumps writes by default) fails."""

    def refuse(const):
        raise ValueError(f"{const} is not JSON")

    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def test_a_step_with_nan_gradients_is_skipped_bit_for_bit(tmp_path, monkeypatch):
    # Step 3 lies inside the second stage (growths before steps 2 and 5): one engine around it.
    monkeypatch.setenv(ENV, "step.grads@3:nan")
    states, recs = {}, {}

    def keep(engine, step, rec):
        states[step], recs[step] = _state(engine), rec

    res = train(micro_config(tmp_path), stop_at=5, on_step=keep)
    # The skipped step left weights, main copies, moments and AdamW's step count exactly as the
    # step before it did: the same state a run that never saw the bad batch holds.
    assert_same_tensors(states[3], states[2])
    assert int(states[3]["adam_step"]) == 3 and int(states[4]["adam_step"]) == 4
    assert not torch.equal(
        states[4]["weight.embedding.word_embeddings.weight"], states[3]["weight.embedding.word_embeddings.weight"]
    )  # training went on
    assert [s for s, r in recs.items() if not r["update_ok"]] == [3]
    assert all(math.isfinite(v) for v in res.losses.values())
    lines = _strict_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in lines if r.get("skipped")] == [3]
    assert lines[3]["grad_norm"] is None
    assert [r["skipped_steps"] for r in lines] == [0, 0, 0, 1, 1]
    assert read_meta(latest_checkpoint(os.path.join(tmp_path, "checkpoints")))["skipped_steps"] == 1


def test_a_diverging_run_stops_in_one_line_at_its_last_good_checkpoint(tmp_path, capsys):
    # The report's case: the README's tiny model at lr 1e6. Step 0 applies a huge update; from
    # step 1 on the gradients overflow (NaN grad norm), and the old loop applied them anyway and
    # checkpointed the NaN weights after step 1.
    run_dir = tmp_path / "run"
    sets = {
        "optim.lr": "1e6",
        "checkpoint.interval": 2,
        "train.eval_interval": 0,
        "logging.progress": "false",
        "logging.tensorboard": "false",
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert cli_main(["train", EXAMPLE, "--run-dir", str(run_dir), *args]) == 1
    cfg = load_run_config(EXAMPLE, [f"run_dir={run_dir}"])
    # (A first use of the data cache also draws the tokenizing progress bar on stderr.)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("tokenize ")]
    assert len(err) == 1, err
    ckpts = os.path.join(cfg.run_dir, "checkpoints")
    # Every checkpoint on disk, `latest` among them, holds finite weights and optimizer state.
    for name in sorted(os.listdir(ckpts)):
        if name.startswith("step_"):
            for key, t in read_global_tensors(os.path.join(ckpts, name)).items():
                assert torch.isfinite(t).all(), (name, key)
    last = latest_checkpoint(ckpts)
    assert "5 steps in a row (1..5)" in err[0] and "train.max_skipped_steps = 5" in err[0]
    assert f"the last good checkpoint is {last}" in err[0]
    lines = _strict_jsonl(os.path.join(cfg.run_dir, "metrics.jsonl"))
    assert [r["skipped_steps"] for r in lines] == [0, 1, 2, 3, 4, 5] and lines[-1]["skipped"] is True
    assert read_meta(last)["step"] == 4  # the state after step 0 (every later step skipped), finite


def test_a_nonfinite_state_is_never_checkpointed(tmp_path):
    def overflow_after_step_3(engine, step, rec):  # what an overflowing update leaves behind
        if step == 3:
            with torch.no_grad():
                next(engine.chunks[0].parameters()).view(-1)[0] = float("inf")

    cfg = micro_config(tmp_path, **STATIC, **{"checkpoint.interval": 2})
    with pytest.raises(
        FloatingPointError,
        match=r"the model state after step 4 holds non-finite weights.*, so "
        r"it was not checkpointed: .*last good checkpoint is .*step_00000002",
    ):
        train(cfg, on_step=overflow_after_step_3)
    assert read_meta(latest_checkpoint(os.path.join(tmp_path, "checkpoints")))["step"] == 2


def test_a_torn_last_metrics_line_is_dropped_with_one_warning(tmp_path, caplog):
    from grow_megatron.config.rundir import read_jsonl
    from grow_megatron.training.metrics import MetricsWriter

    good = [{"step": s, "loss": 8.0 - s} for s in range(3)]
    path = tmp_path / "metrics.jsonl"
    # What a crash in the middle of a write leaves: the last line cut off, no newline.
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 3, "loss": 7.')
    (tmp_path / "events.jsonl").write_text('{"step": 1, "kind": "growth"}\n')
    with caplog.at_level("WARNING"):
        # What a resume at step 2 does first.
        w = MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, resume_step=2)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "dropped 1 unreadable line(s) (line 4;" in warnings[0]
    assert read_jsonl(str(path)) == good[:2]
    w.log({"step": 2, "loss": 6.5})
    assert _strict_jsonl(str(path)) == good[:2] + [{"step": 2, "loss": 6.5}]


def test_a_nonfinite_loss_with_finite_gradients_is_skipped_too(tmp_path):
    """A batch without a single loss token: loss 0/0 = NaN, gradients all zero (finite). AdamW
    would still move the weights (momentum, weight decay) on such a step; it must be skipped."""
    from grow_megatron.engine.build import train_step

    seen = {}

    def empty_batch_after_step_0(engine, step, rec):
        g = torch.Generator().manual_seed(0)
        mbs = [
            {
                "tokens": torch.randint(0, 4096, (2, 32), generator=g),  # 2 micro-batches of [2, 32]
                "labels": torch.randint(0, 4096, (2, 32), generator=g),
                "loss_mask": torch.zeros(2, 32),
                "position_ids": torch.arange(32).repeat(2, 1),
            }
            for _ in range(2)
        ]
        before = _state(engine)
        seen["out"] = train_step(engine, mbs, lr=3e-3)
        seen["grads_finite"] = all(
            torch.isfinite(p.main_grad).all() for m in engine.model for p in m.module.parameters()
        )
        seen["same"] = before, _state(engine)

    train(micro_config(tmp_path, **STATIC), stop_at=1, on_step=empty_batch_after_step_0)
    assert math.isnan(seen["out"]["loss"]) and seen["grads_finite"]
    assert seen["out"]["update_ok"] is False and seen["out"]["grad_norm"] is None
    assert_same_tensors(*seen["same"])
