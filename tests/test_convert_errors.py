"""Conversion refuses what it cannot represent, with one line naming the field (never garbage)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from grow_megatron.cli import main as gm_main
from grow_megatron.config.base import ConfigError
from grow_megatron.convert import UnsupportedModelError, from_hf, to_hf


def hf_dir(tmp_path, name="m", edit_config=None, edit_weights=None, **cfg_kwargs):
    """A tiny random LlamaForCausalLM directory, then optional edits of its config / weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=True)
    kw.update(cfg_kwargs)
    torch.manual_seed(0)
    d = str(tmp_path / name)
    LlamaForCausalLM(LlamaConfig(**kw)).save_pretrained(d)
    if edit_config:
        path = os.path.join(d, "config.json")
        cfg = json.load(open(path))
        edit_config(cfg)
        json.dump(cfg, open(path, "w"))
    if edit_weights:
        path = os.path.join(d, "model.safetensors")
        w = load_file(path)
        edit_weights(w)
        save_file(w, path, metadata={"format": "pt"})
    return d


def _set(**kv):
    return lambda cfg: cfg.update(kv)


def _add_bias(w):
    w["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)


def _untie(w):
    w["lm_head.weight"] = torch.randn_like(w["model.embed_tokens.weight"])


def _drop(w):
    del w["model.layers.1.mlp.up_proj.weight"]


CASES = {
    "attention_bias": (dict(attention_bias=True), None, None, "attention_bias"),
    "mlp_bias": (dict(mlp_bias=True), None, None, "mlp_bias"),
    "activation": (dict(hidden_act="gelu"), None, None, "hidden_act"),
    "head_dim": (dict(head_dim=16), None, None, "head_dim"),
    "rope_scaling_v5": ({}, _set(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
                        None, "rope_parameters.rope_type"),
    "rope_scaling_v4": ({}, _set(rope_scaling={"type": "dynamic", "factor": 2.0}), None, "rope_scaling.rope_type"),
    "rope_theta": ({}, _set(rope_parameters={"rope_type": "default", "rope_theta": 10000.5}), None, "rope_theta"),
    "model_type": ({}, _set(model_type="gpt2"), None, "model_type"),
    "sliding_window": ({}, _set(model_type="mistral", sliding_window=8), None, "sliding_window"),
    "untied_head": ({}, _set(tie_word_embeddings=False), _untie, "tie_word_embeddings"),
    "bias_tensor": ({}, None, _add_bias, "q_proj.bias"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_refuses(tmp_path, case, capsys):
    kwargs, edit_cfg, edit_w, field = CASES[case]
    d = hf_dir(tmp_path, edit_config=edit_cfg, edit_weights=edit_w, **kwargs)
    with pytest.raises(UnsupportedModelError) as err:
        from_hf(d, str(tmp_path / "out"), progress=False)
    assert field in str(err.value)
    assert not os.path.exists(tmp_path / "out" / "checkpoints")
    # The CLI prints it as one line, exit code 2.
    capsys.readouterr()
    assert gm_main(["convert", "from-hf", d, str(tmp_path / "out2")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], lines


def test_from_hf_refuses_missing_tensor(tmp_path):
    d = hf_dir(tmp_path, edit_weights=_drop)
    with pytest.raises(ConfigError, match="missing model.layers.1.mlp.up_proj.weight"):
        from_hf(d, str(tmp_path / "out"), progress=False)


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a checkpoint directory"):
        to_hf(str(tmp_path / "empty"), str(tmp_path / "hf"))
    capsys.readouterr()
    assert gm_main(["convert", "to-hf", str(tmp_path / "empty"), str(tmp_path / "hf")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="no config.json"):
        from_hf(str(tmp_path / "empty"), str(tmp_path / "out"))
