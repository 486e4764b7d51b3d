"""End-to-end training through two growths, and exact resume around a growth (CPU, fp32)."""

import os

import pytest

from engine_helpers import micro_config
from grow_megatron.engine.checkpoint import latest_checkpoint, read_meta, shard_strategies
from grow_megatron.growth.schedule import plan_from_config
from grow_megatron.training.loop import train

# PROP-1 over grow_steps=9 with 3 stages: [2, 3, 4] -> growths before steps 2 and 5.
GROWTH_STEPS = (2, 5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resume is compared with."""
    cfg = micro_config(tmp_path_factory.mktemp("ref"))
    depths = {}
    res = train(cfg, on_step=lambda engine, step, rec: depths.__setitem__(step, engine.depth))
    return cfg, res, depths


def test_plan_of_micro_config(reference):
    cfg, _, _ = reference
    assert plan_from_config(cfg).boundaries == GROWTH_STEPS


def test_trains_through_two_growths(reference):
    cfg, res, depths = reference
    assert [g.step for g in res.growths] == list(GROWTH_STEPS)
    assert [(g.old_depth, g.new_depth) for g in res.growths] == [(4, 8), (8, 12)]
    assert [depths[s] for s in range(12)] == [4] * 2 + [8] * 3 + [12] * 7
    losses = [res.losses[s] for s in range(12)]
    assert all(loss == loss and loss < 20 for loss in losses)  # finite
    # Falling: the last three steps are well below the first three (ln(4096) = 8.3 at init).
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    # Outputs a person looks at.
    for f in ("metrics.jsonl", "events.jsonl", "config.yaml", "loss.png"):
        assert os.path.isfile(os.path.join(cfg.run_dir, f)), f
    meta = read_meta(latest_checkpoint(os.path.join(cfg.run_dir, "checkpoints")))
    assert meta["step"] == 12 and meta["depth"] == 12 and len(meta["growths"]) == 2


@pytest.mark.parametrize(
    "stop_at", [GROWTH_STEPS[1], GROWTH_STEPS[1] + 1], ids=["just-before-growth", "just-after-growth"]
)
def test_resume_reproduces_losses_exactly(reference, tmp_path, stop_at):
    _, ref, _ = reference
    cfg = micro_config(tmp_path)
    first = train(cfg, stop_at=stop_at)
    meta = read_meta(latest_checkpoint(os.path.join(cfg.run_dir, "checkpoints")))
    assert meta["step"] == stop_at
    assert meta["depth"] == (8 if stop_at == GROWTH_STEPS[1] else 12)
    second = train(micro_config(tmp_path))
    assert second.start_step == stop_at
    got = {**first.losses, **second.losses}
    # Bit-for-bit: same weights, same AdamW state, same batches, deterministic CPU kernels.
    assert got == ref.losses
    assert [g.step for g in second.growths] == list(GROWTH_STEPS)


STATIC = {"train.steps": 6, "growth.operator": "none", "growth.grow_steps": "null", "model.num_layers": 4}


def test_bf16_mixed_precision_resumes_exactly_after_a_growth(reference, tmp_path):
    # bf16 model params with fp32 main copies in the distributed optimizer (the GPU default);
    # CPU bf16 matmuls make this a real bf16 run.
    bf16 = {"train.precision": "bf16"}
    full = train(micro_config(tmp_path / "full", **bf16))
    first = train(micro_config(tmp_path / "split", **bf16), stop_at=GROWTH_STEPS[1] + 1)
    second = train(micro_config(tmp_path / "split", **bf16))
    assert {**first.losses, **second.losses} == full.losses
    # Same run as fp32 up to bf16 rounding (8 bits of mantissa: ~0.4% relative per op).
    for step, loss in reference[1].losses.items():
        assert full.losses[step] == pytest.approx(loss, rel=2e-2)


def test_crash_during_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = micro_config(tmp_path, **STATIC)
    train(cfg, stop_at=2)
    root = os.path.join(cfg.run_dir, "checkpoints")
    good = latest_checkpoint(root)

    def broken_save(sd, path, *a, **k):
        with open(os.path.join(path, "partial.distcp"), "w") as f:
            f.write("half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(shard_strategies.dist_checkpointing, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train(micro_config(tmp_path, **STATIC))
    monkeypatch.undo()
    assert latest_checkpoint(root) == good
    assert any(".tmp-" in d for d in os.listdir(root))  # the half-written one is ignored...
    res = train(micro_config(tmp_path, **STATIC))
    assert res.start_step == 2 and res.end_step == 6
    assert not any(".tmp-" in d for d in os.listdir(root))  # ...and cleaned up by the next save


def test_resume_with_a_different_plan_is_refused(tmp_path):
    from grow_megatron.config.base import ConfigError

    train(micro_config(tmp_path), stop_at=3)  # depth 8 at step 3
    with pytest.raises(ConfigError, match="differs from the run it resumes") as err:
        train(micro_config(tmp_path, **{"growth.operator": "none"}))  # static: depth 12 everywhere
    assert "growth.operator: recorded lidas, now none" in str(err.value)


def test_sigterm_stops_cleanly_and_resume_is_exact(reference, tmp_path):
    """A preemption (SIGTERM) mid-run: the step in flight finishes, a checkpoint is written,
    and the resumed run reproduces the uninterrupted losses bit for bit."""
    import signal

    _, ref, _ = reference

    def preempt(engine, step, rec):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    def unhandled(signum, frame):  # what runs if the loop did not take SIGTERM over
        raise RuntimeError("SIGTERM reached the default handler: the run would have been killed")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        first = train(micro_config(tmp_path), on_step=preempt)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the run's handler is gone again
    finally:
        signal.signal(signal.SIGTERM, before)
    assert sorted(first.losses) == [0, 1, 2, 3] and first.end_step == 4
    assert read_meta(latest_checkpoint(os.path.join(tmp_path, "checkpoints")))["step"] == 4
    second = train(micro_config(tmp_path))
    assert second.start_step == 4
    assert {**first.losses, **second.losses} == ref.losses


def test_truncated_checkpoint_is_named_on_resume(tmp_path):
    from grow_megatron.config.base import CheckpointError

    cfg = micro_config(tmp_path)
    train(cfg, stop_at=1)
    ckpt = latest_checkpoint(os.path.join(cfg.run_dir, "checkpoints"))
    shard = next(f for f in sorted(os.listdir(ckpt)) if f.endswith(".distcp"))
    os.truncate(os.path.join(ckpt, shard), 1000)
    with pytest.raises(CheckpointError, match="where .* were written: corrupted or edited") as err:
        train(micro_config(tmp_path))
    assert os.path.join(os.path.basename(ckpt), shard) in str(err.value)
    # Without its manifest, a checkpoint this version wrote (meta.json says so) is damaged:
    # refused in one line, never loaded unverified (tests/test_run_identity.py).
    os.remove(os.path.join(ckpt, "manifest.json"))
    with pytest.raises(CheckpointError, match="has no manifest.json, but its meta.json says grow_megatron") as err:
        train(micro_config(tmp_path))
    assert os.path.basename(ckpt) in str(err.value)
