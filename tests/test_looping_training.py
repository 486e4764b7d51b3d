"""Loop-adapted training (model.loop, docs/looping.md): exact resume around from_step on CPU,
and TP2 / DP2 equal to the single-process run (tolerances as in test_distributed.py)."""

import os

import pytest

from dist_helpers import run_world
from engine_helpers import micro_config, micro_overrides
from grow_megatron.config.base import ConfigError
from grow_megatron.config.run import load_run_config
from grow_megatron.growth.schedule import plan_from_config
from grow_megatron.training.loop import train

# micro_config grows 4 -> 8 -> 12 until step 9 (grow_steps); the loop starts there.
LOOP = "{start: 4, end: 8, repeats: 2, from_step: 9}"
FROM_STEP = 9


def _hooked(engine) -> bool:
    """Whether the block's last layer carries the re-application hook."""
    layer = engine.layers_by_position().get(7)
    return layer is not None and bool(layer._forward_hooks)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = micro_config(tmp_path_factory.mktemp("loopref"), **{"model.loop": LOOP})
    looped = {}
    res = train(cfg, on_step=lambda engine, step, rec: looped.__setitem__(step, _hooked(engine)))
    return res, looped


def test_loop_starts_at_from_step_and_changes_training(reference, tmp_path):
    res, looped = reference
    assert [s for s, on in sorted(looped.items()) if on] == list(range(FROM_STEP, 12))
    plain = train(micro_config(tmp_path, **{"train.steps": 10}))
    assert plain.losses[FROM_STEP - 1] == res.losses[FROM_STEP - 1]  # identical until the loop starts
    assert plain.losses[FROM_STEP] != res.losses[FROM_STEP]


@pytest.mark.parametrize("stop_at", [FROM_STEP - 1, FROM_STEP + 1], ids=["before-from-step", "after-from-step"])
def test_resume_around_from_step_is_exact(reference, tmp_path, stop_at):
    ref, _ = reference
    first = train(micro_config(tmp_path, **{"model.loop": LOOP}), stop_at=stop_at)
    second = train(micro_config(tmp_path, **{"model.loop": LOOP}))
    assert second.start_step == stop_at
    assert {**first.losses, **second.losses} == ref.losses  # bit for bit


def test_loop_block_across_pipeline_stages_is_one_line():
    with pytest.raises(ConfigError) as err:
        plan_from_config(
            load_run_config(
                None,
                micro_overrides(
                    "/tmp/x",
                    **{"model.loop": "{start: 4, end: 8, repeats: 2, from_step: 9}", "parallel.pipeline_parallel": 2},
                ),
                world_size=2,
            )
        )
    assert "within one pipeline stage" in str(err.value) and "\n" not in str(err.value)


# A static 8-layer model keeps the multi-rank runs short; the loop starts mid-run.
STATIC = {
    "growth.operator": "none",
    "model.num_layers": 8,
    "train.steps": 5,
    "model.loop": "{start: 2, end: 5, repeats: 3, from_step: 2}",
    "model.ln_scaling": True,
}


@pytest.fixture(scope="module")
def static_single(tmp_path_factory):
    return train(micro_config(tmp_path_factory.mktemp("static_single"), **STATIC))


@pytest.mark.parametrize("tp", [2, 1], ids=["tp2", "dp2"])
def test_loop_training_multi_rank_equals_single_process(static_single, tmp_path, tp):
    single = static_single
    res = run_world(
        2, micro_overrides(tmp_path / "dist", **STATIC, **{"parallel.tensor_parallel": tp}), str(tmp_path / "out")
    )
    assert sorted(res["losses"]) == sorted(single.losses)
    for step, loss in single.losses.items():
        assert res["losses"][step] == pytest.approx(loss, rel=1e-5), step
    assert os.path.isdir(tmp_path / "dist" / "checkpoints")


def test_logged_flops_count_the_unrolled_depth_from_from_step(reference):
    """docs/method.md §6 at each step's depth, with a looped step costing its unrolled copies (12 layers,
    block 4:8 twice -> 16): per-step FLOPs in metrics.jsonl against flops.py by hand."""
    import json

    res, _ = reference
    with open(os.path.join(res.run_dir, "metrics.jsonl")) as f:
        recs = {r["step"]: r for r in map(json.loads, f) if "flops" in r}
    tokens_per_step = 4 * 32
    prev = 0
    assert sorted(recs) == list(range(12))
    for step in sorted(recs):
        L = 16 if step >= FROM_STEP else recs[step]["depth"]
        # micro_overrides' shape (hidden 64, ffn 160, 4 heads, 2 KV groups, seq 32), embedded vocab 4096
        per_token = 6 * (L * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 160) + 4096 * 64) + 12 * L * 32 * 64
        assert recs[step]["flops"] - prev == tokens_per_step * per_token, step
        prev = recs[step]["flops"]
