"""optim.on_extend without training: the schedule of a run whose train.steps changes."""

import math

import pytest

from grow_megatron.config.base import ConfigError
from grow_megatron.config.training import OptimConfig
from grow_megatron.training.lr import LRSegment, base_segment, extend_schedule, lr_at


def test_base_segment_is_lr_at():
    cfg = OptimConfig(lr=3e-3, min_lr=1e-4, warmup_steps=5, decay_steps=10)
    seg = base_segment(cfg, 40)
    assert [seg.lr(s, cfg) for s in range(40)] == pytest.approx([lr_at(s, cfg, 40) for s in range(40)], rel=1e-14)


@pytest.mark.parametrize("style", ["1-sqrt", "linear", "cosine"])
def test_continue_before_the_decay_is_a_run_of_the_new_length(style):
    """Resumed at step 17 of 40 (constant phase), extended to 60: exactly the 60-step schedule."""
    cfg = OptimConfig(lr=3e-3, min_lr=1e-4, warmup_steps=5, decay_steps=10, decay_style=style)
    seg = extend_schedule(base_segment(cfg, 40), cfg, 17, 60)
    assert [seg.lr(s, cfg) for s in range(17, 60)] == pytest.approx(
        [lr_at(s, cfg, 60) for s in range(17, 60)], rel=1e-14
    )


def test_continue_in_the_decay_stretches_what_is_left():
    """Resumed at step 35 of 40 (half-way through a linear decay 30..40), extended to 45: the
    LR goes on from where it was, linearly to min_lr at step 45, without a jump."""
    cfg = OptimConfig(lr=2e-3, min_lr=0.0, warmup_steps=5, decay_steps=10, decay_style="linear")
    seg = extend_schedule(base_segment(cfg, 40), cfg, 35, 45)
    last = lr_at(34, cfg, 40)  # 2e-3 * (1 - 4/10)
    assert last == pytest.approx(1.2e-3)
    want = [last * (1 - k / 11) for k in range(1, 11)]  # 11 equal steps from step 34 to 45
    assert [seg.lr(s, cfg) for s in range(35, 45)] == pytest.approx(want, rel=1e-12)
    # Extended again from the extension: the stored segment is the schedule it goes on from.
    again = extend_schedule(LRSegment.from_dict(seg.to_dict()), cfg, 40, 50)
    assert again.lr(40, cfg) == pytest.approx(seg.lr(39, cfg) * (1 - 1 / 11), rel=1e-12)


def test_rewarmup_must_fit():
    cfg = OptimConfig(warmup_steps=5, decay_steps=10, on_extend="rewarmup", rewarmup_steps=8)
    with pytest.raises(ConfigError, match="optim.rewarmup_steps"):
        extend_schedule(base_segment(cfg, 40), cfg, 40, 55)
    seg = extend_schedule(base_segment(cfg, 40), cfg, 40, 58)
    assert seg.lr(47, cfg) == cfg.lr and seg.lr(48, cfg) == cfg.lr and seg.lr(57, cfg) < cfg.lr
    last = lr_at(39, cfg, 40)
    assert math.isclose(seg.lr(40, cfg), last + (cfg.lr - last) / 8, rel_tol=1e-12)


def test_checkpoint_from_before_train_steps_was_recorded(tmp_path):
    """A checkpoint whose meta.json has no train_steps: the run's config.yaml says what the
    schedule was, so extending it still follows optim.on_extend instead of jumping to the peak."""
    from grow_megatron.training.history import lr_schedule

    (tmp_path / "config.yaml").write_text("train: {steps: 40}\n")
    cfg = OptimConfig(lr=3e-3, warmup_steps=5, decay_steps=10, on_extend="constant")
    sched = lr_schedule(cfg, 60, 40, {"step": 40, "depth": 12, "growths": []}, str(tmp_path))
    assert sched.lr(40) == lr_at(39, cfg, 40) and "train.steps 40 -> 60" in sched.note
    same = lr_schedule(cfg, 40, 30, {"step": 30, "depth": 12}, str(tmp_path))  # an ordinary resume
    assert same.note is None and same.lr(35) == lr_at(35, cfg, 40)
