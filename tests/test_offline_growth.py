"""Growth through a checkpoint (engine/offline_grow.py) against the in-memory growth manager.

The two routes share nothing but the operator's source map: one re-indexes the global
layer-stacked tensors of a checkpoint on disk, the other moves per-parameter state between
live megatron engines. Both only copy (or zero) values, so they must agree bit for bit.
"""

import os

import pytest
import torch

from engine_helpers import micro_config
from grow_megatron.cli import main as cli_main
from grow_megatron.engine.build import build_engine
from grow_megatron.engine.checkpoint import (
    gather_param_state,
    latest_checkpoint,
    load_checkpoint,
    optimizer_step_count,
    read_meta,
)
from grow_megatron.engine.distributed import device_context, init_distributed
from grow_megatron.engine.offline_grow import grow_checkpoint, grow_tensors
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import get_operator, lidas
from grow_megatron.training.loop import train


@pytest.fixture(scope="module")
def pre_growth(tmp_path_factory):
    """A micro LIDAS run stopped at step 2, just before its first growth (depth 4)."""
    cfg = micro_config(tmp_path_factory.mktemp("run"))
    train(cfg, stop_at=2)
    ckpt = latest_checkpoint(os.path.join(cfg.run_dir, "checkpoints"))
    assert read_meta(ckpt)["depth"] == 4
    return cfg, ckpt


def _state(engine):
    return {n: gather_param_state(engine.optimizer, p) for n, p in engine.named_parameters()}


def test_grow_tensors_hand_example():
    """LIDAS 4 -> 8 (source map [0,1,2,3,0,1,2,3]) with zeroed outputs on a 4-layer stack."""
    g = get_operator("lidas", function_preserving=True)(4, 4)
    w = torch.arange(4.0).view(4, 1, 1).expand(4, 2, 2).clone()
    out = grow_tensors(
        {
            "model.decoder.layers.mlp.linear_fc2.weight": w,
            "optimizer.exp_avg.model.decoder.layers.mlp.linear_fc2.weight": w,
            "model.decoder.layers.input_layernorm.weight": w[:, 0],
            "model.embedding.word_embeddings.weight": w[0],
        },
        g,
    )
    assert out["model.decoder.layers.mlp.linear_fc2.weight"][:, 0, 0].tolist() == [0, 1, 2, 3, 0, 0, 0, 0]
    # Moments are copied, as the in-memory manager does: only the function is preserved.
    assert out["optimizer.exp_avg.model.decoder.layers.mlp.linear_fc2.weight"][:, 0, 0].tolist() == [
        0,
        1,
        2,
        3,
        0,
        1,
        2,
        3,
    ]
    assert out["model.decoder.layers.input_layernorm.weight"][:, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert out["model.embedding.word_embeddings.weight"] is w[0] or torch.equal(
        out["model.embedding.word_embeddings.weight"], w[0]
    )


def _grow_both_ways(cfg, ckpt, growth, out_root, bf16=False):
    """(engine grown in memory, engine loaded from the checkpoint grown on disk), both at the new depth."""
    from grow_megatron.engine.grow import grow

    spec = engine_spec(cfg.model, 4096, optim=cfg.optim, bf16=bf16)
    with device_context():
        init_distributed(1, 1, seed=0)
        e = build_engine(spec, growth.old_depth, init_weights=False)
        load_checkpoint(e, ckpt)
        e = grow(e, growth)
        out = grow_checkpoint(ckpt, growth, cfg.model, str(out_root))
        e2 = build_engine(spec, growth.new_depth, init_weights=False)
        load_checkpoint(e2, out)
    return e, e2, read_meta(out)


def _assert_same_state(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        for k in ("param", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sb[name][k], sa[name][k]), f"{name} {k}"
    return sb


@pytest.mark.parametrize("function_preserving", [False, True], ids=["lidas", "lidas+fp"])
def test_offline_growth_equals_in_memory_growth(pre_growth, tmp_path, function_preserving):
    cfg, ckpt = pre_growth
    g = get_operator("lidas", function_preserving)(4, 4)
    in_memory, offline, meta = _grow_both_ways(cfg, ckpt, g, tmp_path / "checkpoints")
    assert meta["depth"] == 8 and meta["step"] == 2
    assert optimizer_step_count(offline.optimizer) == optimizer_step_count(in_memory.optimizer) == 2
    assert meta["growths"][-1]["source_map"] == list(g.source_map) and meta["growths"][-1]["offline"]
    state = _assert_same_state(in_memory, offline)
    # A real growth happened: position 4 copies layer 0 (and is zeroed where it must be).
    w0 = state["decoder.layers.0.self_attention.linear_proj.weight"]["param"]
    w4 = state["decoder.layers.4.self_attention.linear_proj.weight"]["param"]
    assert torch.count_nonzero(w4) == 0 if function_preserving else torch.equal(w4, w0)


def test_cli_grow_then_train_continues(pre_growth, tmp_path, capsys):
    cfg, ckpt = pre_growth
    out = tmp_path / "grown"
    assert cli_main(["grow", cfg.run_dir, "--operator", "lidas", "--block-size", "4", "--out", str(out)]) == 0
    assert "depth 4 -> 8 (lidas)" in capsys.readouterr().out
    from grow_megatron.config.run import load_run_config

    grown = load_run_config(str(out / "config.yaml"), ["train.steps=6"])
    assert grown.model.num_layers == 8 and not grown.growth.enabled
    res = train(grown)
    assert res.start_step == 2 and res.final_depth == 8 and sorted(res.losses) == [2, 3, 4, 5]
    assert all(torch.isfinite(torch.tensor(v)) for v in res.losses.values())
    # A second grow into the same directory is refused with the field named.
    assert cli_main(["grow", cfg.run_dir, "--operator", "lidas", "--block-size", "4", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_bad_block_size_is_named(pre_growth, tmp_path, capsys):
    cfg, _ = pre_growth
    assert (
        cli_main(["grow", cfg.run_dir, "--operator", "midas", "--block-size", "3", "--out", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err
    assert "--block-size = 3" in err and "the checkpoint has 4 layers" in err


def test_offline_growth_of_a_bf16_checkpoint(tmp_path):
    """bf16 weights with fp32 main copies: the grown checkpoint keeps both, as the in-memory
    growth does (weights are the main copies rounded, never re-derived from bf16)."""
    cfg = micro_config(tmp_path / "run", **{"train.precision": "bf16"})
    train(cfg, stop_at=2)
    ckpt = latest_checkpoint(os.path.join(cfg.run_dir, "checkpoints"))
    in_memory, offline, _ = _grow_both_ways(cfg, ckpt, lidas(4, 4), tmp_path / "checkpoints", bf16=True)
    weights = dict(in_memory.named_parameters())
    for name, p in offline.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, weights[name]), name
    _assert_same_state(in_memory, offline)


def test_cli_truncated_checkpoint_is_one_line(pre_growth, tmp_path, capsys):
    import shutil

    cfg, _ = pre_growth
    run = tmp_path / "run"
    shutil.copytree(cfg.run_dir, run)
    ckpt = latest_checkpoint(str(run / "checkpoints"))
    shard = next(f for f in sorted(os.listdir(ckpt)) if f.endswith(".distcp"))
    os.truncate(os.path.join(ckpt, shard), 1000)
    assert cli_main(["grow", str(run), "--operator", "lidas", "--block-size", "4", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # The manifest check names the truncated file before any reader trips over it.
    assert len(err) == 1 and "where" in err[0] and "were written: corrupted or edited" in err[0]
    assert os.path.join(os.path.basename(ckpt), shard) in err[0]
