"""Example configs parse; model parameter counts match docs/method.md §1 and transformers."""

import glob
import os

import pytest
import torch

from grow_megatron.config.model import PRESETS, ModelConfig
from grow_megatron.config.run import load_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# examples/study_*.yaml are study files, not run configs (tests/test_study.py validates them).
@pytest.mark.parametrize(
    "path",
    sorted(
        p for p in glob.glob(os.path.join(ROOT, "examples", "*.yaml")) if not os.path.basename(p).startswith("study_")
    ),
    ids=lambda p: os.path.basename(p),
)
def test_example_configs_validate(path):
    # The paper-scale examples are written for 8 ranks.
    world = 8 if "smollm" in path and "short" not in path else 1
    cfg = load_run_config(path, world_size=world)
    assert cfg.model.num_layers % (cfg.growth.block_size if cfg.growth.enabled else 1) == 0


@pytest.mark.parametrize("preset,expected", [("smollm-360m", 361_821_120), ("smollm-1.7b", 1_711_376_384)])
def test_preset_param_counts_match_method_and_transformers(preset, expected):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = ModelConfig(**PRESETS[preset])
    assert m.num_params() == expected
    hf_cfg = LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.kv_heads,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    with torch.device("meta"):
        hf = LlamaForCausalLM(hf_cfg)
    assert sum(p.numel() for p in hf.parameters()) == expected


def test_built_megatron_model_has_the_counted_parameters(engine_env):
    from grow_megatron.engine.build import build_engine
    from grow_megatron.engine.resolve import engine_spec

    m = ModelConfig(
        num_layers=6,
        hidden_size=64,
        ffn_hidden_size=176,
        num_attention_heads=8,
        num_query_groups=2,
        vocab_size=300,
        seq_length=32,
    )
    e = build_engine(engine_spec(m, 300), 6)
    n = sum(p.numel() for p in e.model[0].module.parameters())
    assert n == m.num_params(300, 6)
