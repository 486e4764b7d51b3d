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

    kw = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
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
    "rope_scaling_v5": (
        {},
        _set(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
        None,
        "rope_parameters.rope_type",
    ),
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


def _gpt2_dir(tmp_path, with_tokenizer=False):
    """A 2-layer GPT-2 directory: a causal LM, but not a Llama."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    d = str(tmp_path / "gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)).save_pretrained(d)
    return d


def _one_line_err(capsys, *fragments):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_every_model_command_checks_the_model_type_first(tmp_path, capsys, monkeypatch):
    """analyze, convert and eval read config.json before any weights: a GPT-2 directory is one
    line saying what the command accepts (analyze used to build a random 4096-wide, 32-layer
    Llama from defaults and be killed for memory)."""
    import transformers

    d = _gpt2_dir(tmp_path)
    llama = hf_dir(tmp_path)
    built = []

    def no_llama(self, *args, **kwargs):
        built.append(1)
        raise AssertionError("a LlamaForCausalLM was built before the model type was checked")

    monkeypatch.setattr(transformers.LlamaForCausalLM, "__init__", no_llama)
    capsys.readouterr()
    assert gm_main(["analyze", "sublayer", d, "--out", str(tmp_path / "a")]) == 2
    _one_line_err(capsys, "model_type", "gpt2", "Llama-layout model")
    assert gm_main(["convert", "from-hf", d, str(tmp_path / "r")]) == 2
    _one_line_err(capsys, "model_type", "gpt2", "Llama-layout model")
    # analyze checks every model before it loads the first one.
    assert gm_main(["analyze", "sublayer", llama, d, "--out", str(tmp_path / "a")]) == 2
    _one_line_err(capsys, "gpt2")
    assert not built
    # eval runs any causal LM, but not an encoder-decoder.
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "t5"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    assert gm_main(["eval", d, "--tasks", "varassign_basic", "--n", "1", "--device", "cpu"]) == 2
    _one_line_err(capsys, "model_type", "t5", "causal LM")


def test_eval_names_a_missing_tokenizer(tmp_path, capsys):
    d = hf_dir(tmp_path)  # weights and config only
    capsys.readouterr()
    assert gm_main(["eval", d, "--tasks", "varassign_basic", "--n", "1", "--device", "cpu"]) == 2
    _one_line_err(capsys, "has no tokenizer", "tokenizer.json")


def test_missing_path_says_no_such_directory(tmp_path, capsys):
    capsys.readouterr()
    for cmd in (
        ["convert", "to-hf", str(tmp_path / "nope"), str(tmp_path / "hf")],
        ["convert", "check", str(tmp_path / "nope")],
        ["convert", "from-hf", str(tmp_path / "nope"), str(tmp_path / "r")],
        ["eval", str(tmp_path / "nope"), "--device", "cpu"],
        ["analyze", "sublayer", str(tmp_path / "nope"), "--out", str(tmp_path / "a")],
    ):
        assert gm_main(cmd) == 2, cmd
        _one_line_err(capsys, "no such directory")


def test_from_hf_accepts_mistral_without_sliding_window(tmp_path):
    """A MistralForCausalLM whose window never binds is a Llama: from-hf converts it, and the
    native model's logits equal transformers' Mistral forward (fp32)."""
    from transformers import MistralConfig, MistralForCausalLM

    from grow_megatron.config.run import read_run_info
    from grow_megatron.convert.native import native_logits
    from grow_megatron.engine.distributed import device_context

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        sliding_window=None,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    mistral = MistralForCausalLM(cfg).float().eval()
    d = str(tmp_path / "mistral")
    mistral.save_pretrained(d)
    out = from_hf(d, str(tmp_path / "run"), progress=False)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = mistral(tokens).logits.float()
    with device_context():
        ours = native_logits(out["checkpoint"], read_run_info(out["config"]).model, tokens)
    assert (ours - ref).abs().max() < 1e-4
    # The shared loader gives the same network as a LlamaForCausalLM.
    from grow_megatron.convert import load_as_hf

    m, _ = load_as_hf(d)
    assert type(m).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert (m(tokens).logits - ref).abs().max() < 1e-5
    # A window shorter than the context: not a Llama (refused for analyze/convert), but eval runs
    # it with transformers' own Mistral class.
    from grow_megatron.convert import check_model_dir, load_model

    path = os.path.join(d, "config.json")
    cfg_d = json.load(open(path))
    cfg_d["sliding_window"] = 8
    json.dump(cfg_d, open(path, "w"))
    with pytest.raises(UnsupportedModelError, match="sliding_window"):
        check_model_dir(d, "llama")
    assert type(load_model(d, accept="causal-lm").model).__name__ == "MistralForCausalLM"
