"""TP / PP / DP on CPU with gloo: grown multi-rank runs equal the single-process run.

Tolerances: every layout computes the same fp32 math with different reduction orders
(row-parallel partial sums, DP gradient averaging, pipeline-split batches), which changes
results at the level of fp32 rounding (~1e-7 relative per operation). Over 12 AdamW steps
this stays below 1e-5 relative in the loss; weights move by lr * m / sqrt(v) per step, so a
rounding-level change in m or v shows up at most ~lr * 1e-3 = 3e-6 per step: 1e-4 absolute
covers 12 steps with margin while any real mistake (a wrong layer, a missing moment) is O(1e-2).
"""

import os

import pytest
import torch

from dist_helpers import run_world
from engine_helpers import assert_same_tensors, micro_config, micro_overrides
from grow_megatron.engine.build import build_engine
from grow_megatron.engine.checkpoint import gather_param_state, latest_checkpoint, load_checkpoint, read_meta
from grow_megatron.engine.distributed import device_context, init_distributed
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.training.loop import train

LOSS_RTOL = 1e-5
STATE_ATOL = 1e-4


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    cfg = micro_config(tmp_path_factory.mktemp("single"))
    return cfg, train(cfg)


def _final_state(run_dir, cfg):
    """Weights and AdamW state of a run's last checkpoint, loaded into one process (PP=TP=DP=1)."""
    ckpt = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    meta = read_meta(ckpt)
    with device_context():
        init_distributed(1, 1, seed=0)
        spec = engine_spec(cfg.model, 4096, optim=cfg.optim)
        e = build_engine(spec, meta["depth"])
        load_checkpoint(e, ckpt)
        return {n: gather_param_state(e.optimizer, p) for n, p in e.named_parameters()}


def _assert_same_final_state(run_dir, ref_cfg):
    """The last checkpoints of `run_dir` and of the reference run hold the same weights and AdamW state."""
    a, b = _final_state(ref_cfg.run_dir, ref_cfg), _final_state(run_dir, ref_cfg)
    assert a.keys() == b.keys()
    for name in a:
        for k in ("param", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b[name][k], a[name][k], atol=STATE_ATOL, rtol=0, msg=f"{name} {k}")


def _assert_same_run(res, ref_losses):
    assert sorted(res["losses"]) == sorted(ref_losses)
    for step, loss in ref_losses.items():
        assert res["losses"][step] == pytest.approx(loss, rel=LOSS_RTOL), step


@pytest.mark.parametrize(
    "world,tp,pp,operator",
    [(8, 2, 2, "lidas"), (4, 2, 2, "midas")],
    ids=["tp2-pp2-dp2-lidas", "tp2-pp2-midas"],
)
def test_grown_multi_rank_run_equals_single_process(single, tmp_path, world, tp, pp, operator):
    ref_cfg, _ = single
    ref = micro_config(tmp_path / "ref", **{"growth.operator": operator}) if operator != "lidas" else ref_cfg
    ref_res = train(ref) if operator != "lidas" else single[1]
    ov = micro_overrides(
        tmp_path / "dist",
        **{"parallel.tensor_parallel": tp, "parallel.pipeline_parallel": pp, "growth.operator": operator},
    )
    res = run_world(world, ov, str(tmp_path / "out"))
    _assert_same_run(res, ref_res.losses)
    # Balanced stages after each growth: 4 -> 8 -> 12 layers on PP=2.
    assert [g["pipeline_split"] for g in res["growths"]] == [[4, 4], [6, 6]]
    # LIDAS 4 -> 8 copies layers 2, 3 (stage 1) to positions 2, 3 (stage 0) and 0..3 to
    # positions 4..7 (stage 1): layers cross stages in both directions.
    _assert_same_final_state(str(tmp_path / "dist"), ref)


def test_interleaved_pipeline_with_data_parallel_equals_single_process(single, tmp_path):
    """PP=2 x 2 virtual stages x DP=2: LIDAS 4 -> 8 -> 12 over four virtual stages, so growths
    move layers between the chunks of one rank as well as between ranks; one micro-batch size
    smaller than the reference (the interleaved schedule needs PP micro-batches per rank), which
    changes only the summation order of the token-mean loss."""
    ref_cfg, ref_res = single
    ov = micro_overrides(
        tmp_path / "dist",
        **{"parallel.pipeline_parallel": 2, "parallel.virtual_stages": 2, "train.micro_batch_size": 1},
    )
    res = run_world(4, ov, str(tmp_path / "out"))
    _assert_same_run(res, ref_res.losses)
    assert [g["pipeline_split"] for g in res["growths"]] == [[2, 2, 2, 2], [3, 3, 3, 3]]
    # Loaded into one process from the interleaved layout's checkpoint: dist_checkpointing
    # reshards the 2 ranks x 2 chunks back into one chunk.
    _assert_same_final_state(str(tmp_path / "dist"), ref_cfg)


def test_save_pp1_resume_interleaved(single, tmp_path):
    """A single-process checkpoint taken after the first growth resumes on 2 ranks x 2 chunks;
    the second growth there goes through host staging (old engine freed first) into an uneven
    user split, (2,2,2,2) -> (2,4,3,3)."""
    ref_cfg, ref_res = single
    first = train(micro_config(tmp_path), stop_at=4)
    ov = micro_overrides(
        tmp_path,
        **{
            "parallel.pipeline_parallel": 2,
            "parallel.virtual_stages": 2,
            "growth.host_staging": "on",
            "parallel.pipeline_split": "[2, 4, 3, 3]",
        },
    )
    second = run_world(2, ov, str(tmp_path / "out"))
    assert second["start"] == 4 and second["final_depth"] == 12
    assert [(g["host_staged"], g["pipeline_split"]) for g in second["growths"] if g["step"] >= 4] == [
        (True, [2, 4, 3, 3])
    ]
    _assert_same_run({"losses": {**first.losses, **second["losses"]}}, ref_res.losses)


def test_save_pp2_after_growth_resume_pp1(single, tmp_path):
    ref_cfg, ref_res = single
    ov = micro_overrides(tmp_path, **{"parallel.pipeline_parallel": 2})
    first = run_world(2, ov, str(tmp_path / "out"), stop_at=6)  # growth 8 -> 12 happened at step 5
    assert read_meta(latest_checkpoint(os.path.join(tmp_path, "checkpoints")))["depth"] == 12
    second = train(micro_config(tmp_path))  # same run dir, one process
    assert second.start_step == 6
    _assert_same_run({"losses": {**first["losses"], **second.losses}}, ref_res.losses)


def test_save_pp1_resume_pp2(single, tmp_path):
    ref_cfg, ref_res = single
    first = train(micro_config(tmp_path), stop_at=6)
    ov = micro_overrides(tmp_path, **{"parallel.pipeline_parallel": 2})
    second = run_world(2, ov, str(tmp_path / "out"))
    assert second["start"] == 6
    _assert_same_run({"losses": {**first.losses, **second["losses"]}}, ref_res.losses)


def test_export_and_offline_growth_are_layout_free(single, tmp_path):
    """A checkpoint re-saved by a TP=2 x PP=2 run exports to the same HF weights, and grows on
    disk to the same checkpoint, bit for bit."""
    import shutil

    from safetensors.torch import load_file

    from grow_megatron.convert import to_hf

    ref_cfg, _ = single
    shutil.copytree(ref_cfg.run_dir, tmp_path / "run")
    # Resuming at the last step trains nothing and checkpoints again, now from 4 ranks.
    res = run_world(
        4,
        micro_overrides(tmp_path / "run", **{"parallel.tensor_parallel": 2, "parallel.pipeline_parallel": 2}),
        str(tmp_path / "out"),
    )
    assert res["start"] == res["end"] == 12
    to_hf(ref_cfg.run_dir, str(tmp_path / "hf_single"), progress=False)
    to_hf(str(tmp_path / "run"), str(tmp_path / "hf_tp2pp2"), progress=False)
    a = load_file(str(tmp_path / "hf_single" / "model.safetensors"))
    b = load_file(str(tmp_path / "hf_tp2pp2" / "model.safetensors"))
    assert_same_tensors(a, b)

    from grow_megatron.engine.checkpoint import read_global_tensors
    from grow_megatron.engine.offline_grow import grow_checkpoint
    from grow_megatron.growth.operators import midas

    grown = []
    for run in (ref_cfg.run_dir, str(tmp_path / "run")):
        ckpt = latest_checkpoint(os.path.join(run, "checkpoints"))
        with device_context():
            init_distributed(1, 1, seed=0)
            grown.append(
                read_global_tensors(grow_checkpoint(ckpt, midas(12, 4), ref_cfg.model, os.path.join(run, "grown")))
            )
    assert grown[0]["model.decoder.layers.mlp.linear_fc1.weight"].shape[0] == 16
    assert_same_tensors(grown[0], grown[1])
