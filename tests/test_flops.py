"""docs/method.md §6 FLOPs accounting: Table 7 reproduced, per-stage sums, a hand-computed case."""

from __future__ import annotations

import dataclasses
import json

import pytest

from grow_megatron.cli.flops import main as flops_main
from grow_megatron.config.model import ModelConfig
from grow_megatron.growth import flops as F
from grow_megatron.growth.operators import lidas, midas
from grow_megatron.growth.schedule import GrowthPlan, make_plan


def paper_comparison(preset: str, rounding: str = "paper") -> F.FlopsComparison:
    """Table 7 for a preset of docs/method.md §1 with the paper's settings (F.PAPER_SETTINGS), as
    `grow-megatron flops --paper` assembles it."""
    shape, cfg = ModelConfig.from_preset(preset), F.PAPER_SETTINGS[preset]
    plan = F.prop_plan(shape.num_layers, cfg.block_size, cfg.grow_steps, cfg.alpha, rounding)
    return F.compare(shape, plan, cfg.total_steps, cfg.tokens_per_step)


@pytest.mark.parametrize("preset", ["smollm-360m", "smollm-1.7b"])
def test_table7_static_exact(preset):
    static_pf, _, _ = F.PAPER_TABLE7[preset]
    c = paper_comparison(preset)
    # The paper prints 3 decimals; the integer FLOPs are exact, so compare after rounding.
    assert round(c.static.petaflops, 3) == static_pf
    assert c.static.flops == 200_000 * F.PAPER_SETTINGS[preset].tokens_per_step * F.model_flops_per_token(
        ModelConfig.from_preset(preset)
    )


def test_static_flops_integers():
    # Exact integer values behind docs/method.md §6's 613,527.5 and 4,813,222.1 PF.
    assert paper_comparison("smollm-360m").static.flops == 613_527_488_299_008 * 10**6
    assert paper_comparison("smollm-1.7b").static.flops == 4_813_222_101_752_217_600_000


@pytest.mark.parametrize("preset", ["smollm-360m", "smollm-1.7b"])
def test_table7_grown_and_ratio(preset):
    _, grown_pf, ratio = F.PAPER_TABLE7[preset]
    c = paper_comparison(preset, rounding="paper")
    # All printed digits (3 decimals of a PF) are reproduced with the paper's stage rounding.
    assert round(c.grown.petaflops, 3) == grown_pf
    assert round(c.ratio, 3) == ratio
    # docs/method.md §4's largest remainder moves a handful of steps into shallower stages: within 1e-5.
    s = paper_comparison(preset, rounding="spec")
    assert s.grown.flops < c.grown.flops
    assert abs(s.grown.petaflops - grown_pf) / grown_pf < 1e-5
    assert round(s.ratio, 3) == ratio


def test_paper_stage_steps():
    assert F.paper_stage_steps(8, 170_000) == [4722, 9444, 14166, 18888, 23611, 28333, 33055, 37777]
    assert F.paper_stage_steps(6, 170_000) == [8095, 16190, 24285, 32380, 40476, 48571]
    c = paper_comparison("smollm-360m")
    assert [s.depth for s in c.grown.stages] == [4, 8, 12, 16, 20, 24, 28, 32]
    # Last stage: its own 37777 + 4 rounding leftovers + 30000 cooldown, all at full depth.
    assert c.grown.stages[-1].steps == 37_777 + 4 + 30_000


@pytest.mark.parametrize("preset", ["smollm-360m", "smollm-1.7b"])
@pytest.mark.parametrize("rounding", ["spec", "paper"])
def test_stage_sums(preset, rounding):
    c = paper_comparison(preset, rounding)
    for run in (c.static, c.grown):
        assert run.steps == 200_000
        assert run.tokens == 200_000 * c.tokens_per_step
        assert sum(s.flops for s in run.stages) == run.flops
        assert sum(s.tokens * s.flops_per_token for s in run.stages) == run.flops
        assert sum(s.petaflops for s in run.stages) == pytest.approx(run.petaflops, rel=1e-12)


def test_tiny_hand_computed():
    shape = ModelConfig(
        num_layers=2,
        hidden_size=4,
        ffn_hidden_size=8,
        num_attention_heads=2,
        num_query_groups=1,
        vocab_size=10,
        seq_length=3,
    )
    assert shape.kv_size == 2
    # N = 2 * (2*16 + 2*4*2 + 3*4*8) + 10*4 = 2 * 144 + 40
    assert F.formula_params(shape) == 328
    assert F.model_flops_per_token(shape) == 6 * 328 + 12 * 2 * 3 * 4 == 2256
    assert F.model_flops_per_token_causal(shape) == 6 * 328 + 6 * 2 * 3 * 4
    # Depth 1: N = 144 + 40 = 184 -> 6*184 + 12*1*3*4 = 1248 per token.
    assert F.model_flops_per_token(shape.with_layers(1)) == 1248
    plan = make_plan(2, 1, 6, midas)  # PROP-1 over 6 steps: [2, 4]
    assert plan.stage_steps == (2, 4)
    c = F.compare(shape, plan, total_steps=10, tokens_per_step=6)
    assert [(s.depth, s.steps) for s in c.grown.stages] == [(1, 2), (2, 8)]
    assert c.grown.flops == 2 * 6 * 1248 + 8 * 6 * 2256 == 123_264
    assert c.static.flops == 10 * 6 * 2256 == 135_360
    assert c.ratio == pytest.approx(135_360 / 123_264)


def test_operator_does_not_matter_and_checks():
    shape = ModelConfig.from_preset("smollm-360m")
    a = F.grown_flops(shape, make_plan(32, 4, 170_000, midas), 200_000, 2**20)
    b = F.grown_flops(shape, make_plan(32, 4, 170_000, lidas), 200_000, 2**20)
    assert a.flops == b.flops == paper_comparison("smollm-360m", "spec").grown.flops
    with pytest.raises(ValueError, match="grows to 24"):
        F.grown_flops(shape, make_plan(24, 4, 100, midas), 200, 1)
    with pytest.raises(ValueError, match="ends before"):
        F.grown_flops(shape, make_plan(32, 4, 1000, midas), 500, 1)
    with pytest.raises(ValueError, match="not divisible"):
        F.check_shape(
            ModelConfig(
                num_layers=2,
                hidden_size=10,
                ffn_hidden_size=8,
                num_attention_heads=3,
                num_query_groups=1,
                vocab_size=10,
                seq_length=3,
            )
        )
    static = F.grown_flops(shape, GrowthPlan(32, (0,), ()), 100, 7)
    assert static.flops == F.static_flops(shape, 100, 7).flops


def test_formula_params_match_hf_minus_norms():
    # docs/method.md §1 counts (transformers LlamaForCausalLM, tied) = N + norm gains (2 per layer + final).
    for preset, hf in (("smollm-360m", 361_821_120), ("smollm-1.7b", 1_711_376_384)):
        s = ModelConfig.from_preset(preset)
        assert F.formula_params(s) + (2 * s.num_layers + 1) * s.hidden_size == hf


def test_mfu():
    # The H100 reference measurements in docs/benchmarks.md (tokens/s there are rounded to 3-4 digits).
    assert F.mfu(106_200, F.model_flops_per_token_causal(ModelConfig.from_preset("smollm-360m"))) == pytest.approx(
        0.274, abs=5e-4
    )
    assert F.mfu(36_700, F.model_flops_per_token_causal(ModelConfig.from_preset("smollm-1.7b"))) == pytest.approx(
        0.404, abs=1e-3
    )
    assert F.mfu(1.0, 989e12) == 1.0


def test_cli_paper_table_and_json(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert flops_main(["--preset", "smollm-360m", "--paper", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "476,147.897" in text and "613,527.488" in text
    d = json.loads(out.read_text())
    assert round(d["grown"]["petaflops"], 3) == 476147.897
    assert round(d["static"]["petaflops"], 3) == 613527.488
    assert round(d["ratio"], 3) == 1.289
    assert len(d["grown"]["stages"]) == 8
    assert d["model_flops_per_token"] == F.model_flops_per_token(ModelConfig.from_preset("smollm-360m"))


def test_cli_explicit_flags(capsys, tmp_path):
    out = tmp_path / "f.json"
    argv = [
        "--layers",
        "2",
        "--hidden",
        "4",
        "--ffn",
        "8",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--vocab",
        "10",
        "--seq",
        "3",
        "--steps",
        "10",
        "--grow-steps",
        "6",
        "--block-size",
        "1",
        "--global-batch",
        "2",
        "--json",
        str(out),
    ]
    assert flops_main(argv) == 0
    d = json.loads(out.read_text())
    assert d["grown"]["flops"] == 123_264 and d["static"]["flops"] == 135_360


def test_cli_errors():
    from grow_megatron.config.base import ConfigError

    with pytest.raises(ConfigError, match="tokens_per_step"):
        flops_main(["--preset", "smollm-360m", "--steps", "10"])
    with pytest.raises(ConfigError, match="missing"):
        flops_main(["--layers", "2", "--steps", "10"])


def _write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def test_cli_run_config(tmp_path):
    pytest.importorskip("grow_megatron.config.run")
    cfg = _write(
        tmp_path,
        "model: {preset: smollm-360m}\ngrowth: {operator: lidas, block_size: 4}\n"
        "train: {steps: 200000, global_batch_size: 512, micro_batch_size: 8}\n"
        "optim: {decay_steps: 30000}\n",
    )
    out = tmp_path / "f.json"
    assert flops_main([cfg, "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    # The trainer's plan (docs/method.md §4 rounding) with 512 x 2048 = 2^20 tokens per step.
    assert d["grown"]["flops"] == paper_comparison("smollm-360m", "spec").grown.flops
    assert d["static"]["flops"] == paper_comparison("smollm-360m").static.flops
    assert flops_main([cfg, "--rounding", "paper", "--json", str(out)]) == 0
    assert round(json.loads(out.read_text())["grown"]["petaflops"], 3) == 476147.897


def test_cli_run_config_tiny_and_static(tmp_path, capsys):
    pytest.importorskip("grow_megatron.config.run")

    tiny = _write(
        tmp_path,
        "model: {preset: tiny}\ngrowth: {operator: midas, block_size: 2}\n"
        "train: {steps: 100, global_batch_size: 8, micro_batch_size: 4}\n"
        "optim: {warmup_steps: 5, decay_steps: 20}\n",
    )
    out = tmp_path / "f.json"
    # No model.vocab_size: the trainer's vocabulary is the embedded tokenizer's, so is flops'.
    from grow_megatron.data.tokenizer import load_tokenizer

    assert flops_main([tiny, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    vocab = load_tokenizer(None).vocab_size
    assert f"vocab={vocab} (the embedded tokenizer)" in text
    d = json.loads(out.read_text())
    assert d["shape"]["vocab_size"] == vocab
    # A small run reads in a unit where its numbers are not 0.000 (this one: TFLOP).
    total = d["grown"]["flops"]
    assert 1e12 <= total < 1e15 and f"{total / 1e12:,.3f}" in text and "TFLOP" in text
    assert flops_main([tiny, "--vocab", "1000", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [s["depth"] for s in d["grown"]["stages"]] == [2, 4, 6, 8]
    assert sum(s["steps"] for s in d["grown"]["stages"][:-1]) + d["grown"]["stages"][-1]["steps"] == 100
    static = _write(
        tmp_path,
        "model: {preset: smollm-1.7b}\n"
        "train: {steps: 1000, global_batch_size: 8, micro_batch_size: 4}\n"
        "optim: {warmup_steps: 5, decay_steps: 20}\n",
    )
    assert flops_main([static, "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert "grown" not in d and d["static"]["flops"] == 1000 * 8 * 2048 * F.model_flops_per_token(
        ModelConfig.from_preset("smollm-1.7b")
    )


def test_shape_from_configs():
    s = ModelConfig.from_preset("smollm-360m")
    hf = pytest.importorskip("transformers").LlamaConfig(
        vocab_size=49152,
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
    )
    from grow_megatron.convert.hf import shape_from_hf_config

    # A transformers config is read by the conversion's one reader; it counts like the preset.
    assert F.shape_dict(shape_from_hf_config(hf, seq_length=2048)) == F.shape_dict(s)
    assert F.model_flops_per_token(shape_from_hf_config(hf, seq_length=2048)) == F.model_flops_per_token(s)
    # num_query_groups None means MHA.
    mha = dataclasses.replace(ModelConfig.from_preset("smollm-1.7b"), num_query_groups=None)
    assert F.model_flops_per_token(mha) == F.model_flops_per_token(ModelConfig.from_preset("smollm-1.7b"))
    assert F.shape_dict(mha)["num_query_groups"] == 32
    tiny = ModelConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="vocab_size"):
        F.model_flops_per_token(tiny)
    assert F.flops_shape(tiny, vocab_size=1000).vocab_size == 1000
    assert F.flops_shape(tiny, vocab_size=1000, seq_length=64).seq_length == 64


def test_cli_prints_the_shape_line(capsys):
    assert flops_main(["--preset", "smollm-360m", "--paper"]) == 0
    assert (
        "model: ModelShape(num_layers=32, hidden_size=960, ffn_hidden_size=2560, num_attention_heads=15, "
        "num_query_groups=5, vocab_size=49152, seq_length=2048)\n"
    ) in capsys.readouterr().out


def test_format_flops_units():
    assert F.format_flops(0) == "0.000 FLOP"
    assert F.format_flops(999) == "999.000 FLOP"
    assert F.format_flops(1_000) == "1.000 kFLOP"
    assert F.format_flops(5_245_634_347_008) == "5.246 TFLOP"
    assert F.format_flops(2.5e17) == "250.000 PFLOP"
    assert F.format_flops(6.135e20) == "613,500.000 PFLOP"  # the paper's unit stays the largest
    assert F.format_flops(3e12, unit=("GFLOP", 10**9)) == "3,000.000 GFLOP"
