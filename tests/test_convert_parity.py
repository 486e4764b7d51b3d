"""Conversion to and from Hugging Face Llama: logit parity and exact round trips (docs/convert.md).

Parity bound: both sides compute in fp32 with the same math but different kernels and
summation orders (fused QKV matmul vs three matmuls, SDPA on [s,b] vs [b,s] layouts, the
LN-Scaling factor applied after the gain vs folded into it), so logits differ by a few fp32
ulps of the activations: ~1e-6 measured on these tiny models. 1e-4 leaves two orders of
magnitude for that while any real mapping error (a swapped head, an unfolded gain, a wrong
half of fc1) moves logits by 1e-2 or more.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from engine_helpers import assert_same_tensors
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import RunConfig, dump_run_config
from grow_megatron.config.training import OptimConfig
from grow_megatron.convert import compare_logits, from_hf, load_as_hf, to_hf
from grow_megatron.convert.keymap import merge_qkv, split_qkv
from grow_megatron.engine.build import build_engine
from grow_megatron.engine.checkpoint import save_checkpoint
from grow_megatron.engine.grow import grow
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import get_operator

V = 4096  # the embedded tokenizer's vocabulary, so exports carry a working tokenizer
TOL = 1e-4


def make_run(run_dir, *, heads=4, kv=2, ln_scaling=False, depth=4, grown=False, seed=0, bf16=False, hidden=32):
    """A run dir with one checkpoint of random weights (norm gains too, so a missing LN-Scaling
    fold shows); `grown`: grown 4 -> 8 by LIDAS right before saving."""
    model = ModelConfig(
        num_layers=8,
        hidden_size=hidden,
        ffn_hidden_size=48,
        num_attention_heads=heads,
        num_query_groups=kv,
        vocab_size=V,
        seq_length=16,
        ln_scaling=ln_scaling,
        kernels="off",
    )
    spec = engine_spec(model, V, optim=OptimConfig(warmup_steps=0, decay_steps=0), bf16=bf16)
    torch.manual_seed(seed)
    engine = build_engine(spec, depth)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in engine.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    if bf16:  # the optimizer's fp32 main params follow the model params only through its copy
        engine.optimizer.reload_model_params()
    growths = []
    if grown:
        growth = get_operator("lidas")(depth, 4)
        engine = grow(engine, growth)
        growths.append({"step": 3, **growth.to_dict()})
    os.makedirs(run_dir, exist_ok=True)
    cfg = RunConfig(name="t", run_dir=str(run_dir), model=model)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(dump_run_config(cfg))
    meta = {"growths": growths, "name": "t", "stage_steps": [3, 4], "operator": "lidas" if grown else "none"}
    return save_checkpoint(engine, os.path.join(run_dir, "checkpoints"), 3, meta)


CASES = {
    "mha": dict(heads=4, kv=4, ln_scaling=False),
    "gqa": dict(heads=4, kv=2, ln_scaling=False),
    "mha_lns": dict(heads=4, kv=4, ln_scaling=True),
    "gqa_lns_grown": dict(heads=4, kv=2, ln_scaling=True, grown=True),
    "mqa_grown": dict(heads=4, kv=1, ln_scaling=False, grown=True),
    "smollm360m_heads": dict(heads=15, kv=5, ln_scaling=True, hidden=60),  # 3 query heads per group
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_logit_parity(engine_env, tmp_path, case):
    ckpt = make_run(tmp_path / "run", **CASES[case])
    out = to_hf(str(tmp_path / "run"), str(tmp_path / "hf"), progress=False)
    assert out["depth"] == (8 if CASES[case].get("grown") else 4)
    diff = compare_logits(ckpt, str(tmp_path / "hf"))
    print(f"{case}: max |native - HF| logits = {diff:.3g}")
    assert diff < TOL
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["num_key_value_heads"] == CASES[case]["kv"]
    assert cfg["max_position_embeddings"] == 16 and cfg["vocab_size"] == V and cfg["hidden_act"] == "silu"
    assert cfg["grow_megatron_history"]["ln_scaling_folded_into_norms"] == CASES[case]["ln_scaling"]


def test_export_records_growth_and_tokenizer(engine_env, tmp_path):
    make_run(tmp_path / "run", ln_scaling=True, grown=True)
    to_hf(str(tmp_path / "run"), str(tmp_path / "hf"), progress=False)
    hist = json.loads((tmp_path / "hf" / "grow_megatron.json").read_text())
    assert hist["depths"] == [4, 8] and hist["growth_steps"] == [3] and hist["step"] == 3
    assert hist["growths"][0]["source_map"] == [0, 1, 2, 3, 0, 1, 2, 3] and hist["operator"] == "lidas"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["grow_megatron_history"] == hist
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    from grow_megatron.config.data import DataConfig
    from grow_megatron.data import build_tokenizer

    ours = build_tokenizer(DataConfig())
    text = "def f(x):\n    return x + 1"
    assert tok(text, add_special_tokens=False)["input_ids"] == ours.tokenize(text)
    gen = GenerationConfig.from_pretrained(str(tmp_path / "hf"))
    assert gen.eos_token_id == ours.eod
    # No lm_head in the file: it is the embedding (tied).
    assert "lm_head.weight" not in load_file(str(tmp_path / "hf" / "model.safetensors"))


def test_round_trip_is_exact_and_native_matches_hf(engine_env, tmp_path):
    make_run(tmp_path / "run", heads=4, kv=2, ln_scaling=True, grown=True)
    to_hf(str(tmp_path / "run"), str(tmp_path / "hf1"), progress=False)
    back = from_hf(str(tmp_path / "hf1"), str(tmp_path / "run2"), progress=False)
    to_hf(str(tmp_path / "run2"), str(tmp_path / "hf2"), progress=False)
    a = load_file(str(tmp_path / "hf1" / "model.safetensors"))
    b = load_file(str(tmp_path / "hf2" / "model.safetensors"))
    assert_same_tensors(a, b)
    # from-hf -> native logits equal the HF logits.
    diff = compare_logits(back["checkpoint"], str(tmp_path / "hf1"))
    print(f"from-hf native vs HF: {diff:.3g}")
    assert diff < TOL
    meta = json.loads(open(os.path.join(back["checkpoint"], "meta.json")).read())
    assert meta["step"] == 0 and meta["depth"] == 8 and meta["source"]["format"] == "huggingface"
    assert meta["source"]["history"]["depths"] == [4, 8]


def test_from_hf_with_ln_scaling_restores_the_scaled_model(engine_env, tmp_path):
    make_run(tmp_path / "run", ln_scaling=True, grown=True, seed=5)
    to_hf(str(tmp_path / "run"), str(tmp_path / "hf"), progress=False)
    back = from_hf(str(tmp_path / "hf"), str(tmp_path / "run2"), ln_scaling=True, progress=False)
    assert compare_logits(back["checkpoint"], str(tmp_path / "hf")) < TOL
    # The gains come back to the original (unfolded) ones up to one rounding.
    from grow_megatron.convert.native import NativeReader

    orig = NativeReader(os.path.join(tmp_path, "run", "checkpoints", "step_00000003"))
    new = NativeReader(back["checkpoint"])
    for key in ("decoder.layers.input_layernorm.weight", "decoder.layers.pre_mlp_layernorm.weight"):
        torch.testing.assert_close(new.read(key), orig.read(key), rtol=3e-7, atol=0)
    for key in ("decoder.layers.self_attention.linear_qkv.weight", "decoder.layers.mlp.linear_fc1.weight"):
        assert torch.equal(new.read(key), orig.read(key))


def test_load_as_hf_native_equals_exported(engine_env, tmp_path):
    make_run(tmp_path / "run", ln_scaling=True)
    to_hf(str(tmp_path / "run"), str(tmp_path / "hf"), progress=False)
    m1, t1 = load_as_hf(str(tmp_path / "run"), dtype="float32")
    m2, t2 = load_as_hf(str(tmp_path / "hf"), device="cpu", dtype=torch.float32)
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        assert torch.equal(m1(x).logits, m2(x).logits)
    assert not m1.training and m1.lm_head.weight.data_ptr() == m1.model.embed_tokens.weight.data_ptr()
    assert t1("hello world")["input_ids"] == t2("hello world")["input_ids"]


def test_qkv_split_merge_inverse_and_layout():
    shape = ModelConfig(
        num_layers=1, hidden_size=12, ffn_hidden_size=8, num_attention_heads=6, num_query_groups=2, vocab_size=4
    )  # head_dim 2
    # Rows labelled by megatron's layout: per group g, [q heads of g, k_g, v_g].
    rows = []
    for g in range(2):
        rows += (
            [("q", g * 3 + j, r) for j in range(3) for r in range(2)]
            + [("k", g, r) for r in range(2)]
            + [("v", g, r) for r in range(2)]
        )
    code = {"q": 0, "k": 100, "v": 200}
    qkv = torch.tensor([[code[t] + 10 * h + r] for t, h, r in rows], dtype=torch.float32)  # [20, 1]
    q, k, v = split_qkv(qkv, shape)
    assert q[:, 0].tolist() == [10 * h + r for h in range(6) for r in range(2)]
    assert k[:, 0].tolist() == [100 + 10 * h + r for h in range(2) for r in range(2)]
    assert v[:, 0].tolist() == [200 + 10 * h + r for h in range(2) for r in range(2)]
    assert torch.equal(merge_qkv(q, k, v, shape), qkv)


def test_plain_hf_model_imports_and_trains_on(engine_env, tmp_path):
    """A Llama made by transformers (not by us): from-hf parity, then `train` continues from it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from grow_megatron.config.data import DataConfig
    from grow_megatron.config.run import load_run_config
    from grow_megatron.convert.native import NativeReader
    from grow_megatron.data import build_tokenizer
    from grow_megatron.training.loop import train

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        initializer_range=0.1,
    )
    hf = str(tmp_path / "hf")
    LlamaForCausalLM(cfg).save_pretrained(hf)
    build_tokenizer(DataConfig()).save(hf)
    out = from_hf(hf, str(tmp_path / "run"), progress=False)
    assert compare_logits(out["checkpoint"], hf) < TOL
    run_cfg = load_run_config(
        out["config"],
        [
            "train.steps=1",
            "train.global_batch_size=2",
            "train.micro_batch_size=2",
            "optim.lr=1e-9",
            "optim.warmup_steps=0",
            "optim.decay_steps=0",
            "logging.progress=false",
            "logging.tensorboard=false",
        ],
    )
    assert run_cfg.model.norm_eps == 1e-6 and run_cfg.model.rope_theta == 500.0 and run_cfg.data.tokenizer
    res = train(run_cfg)
    assert res.start_step == 0 and res.end_step == 1 and res.final_depth == 3
    # It trained from the converted weights (a fresh init would be ~0.1 away, the update is ~1e-9).
    before = NativeReader(out["checkpoint"]).read("decoder.layers.mlp.linear_fc1.weight")
    after = NativeReader(os.path.join(out["run_dir"], "checkpoints", "step_00000001")).read(
        "decoder.layers.mlp.linear_fc1.weight"
    )
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_bf16_checkpoint_exports_model_or_main_params(engine_env, tmp_path):
    ckpt = make_run(tmp_path / "run", ln_scaling=True, bf16=True)
    assert to_hf(str(tmp_path / "run"), str(tmp_path / "hf16"), progress=False)["dtype"] == "torch.bfloat16"
    assert to_hf(ckpt, str(tmp_path / "hf32"), main_params=True, progress=False)["dtype"] == "torch.float32"
    a = load_file(str(tmp_path / "hf16" / "model.safetensors"))
    b = load_file(str(tmp_path / "hf32" / "model.safetensors"))
    assert all(a[k].dtype == torch.bfloat16 and b[k].dtype == torch.float32 for k in a)
    # The fp32 main copy rounds to the bf16 weights (norms: folded in fp32, then rounded).
    for k in a:
        if "layernorm" not in k:
            assert torch.equal(b[k].to(torch.bfloat16), a[k]), k
    assert compare_logits(ckpt, str(tmp_path / "hf32")) < TOL


def test_to_hf_refuses_an_existing_export_and_writes_files_by_umask(engine_env, tmp_path, capsys):
    from grow_megatron.cli import main as gm_main
    from grow_megatron.config.data import DataConfig
    from grow_megatron.convert.api import text_tokens
    from grow_megatron.data import build_tokenizer

    make_run(tmp_path / "run")
    run, hf = str(tmp_path / "run"), tmp_path / "hf"
    old = os.umask(0o027)
    try:
        to_hf(run, str(hf), progress=False)
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in hf.iterdir()}
    assert set(modes.values()) == {oct(0o640)}, modes  # model.safetensors like the rest
    # A second export into the same directory: one line, nothing touched; --force overwrites.
    stamp = (hf / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert gm_main(["convert", "to-hf", run, str(hf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists and is not empty" in err[0] and "--force" in err[0]
    assert (hf / "model.safetensors").stat().st_mtime_ns == stamp
    assert gm_main(["convert", "to-hf", run, str(hf), "--force", "--no-progress"]) == 0
    assert (hf / "model.safetensors").stat().st_mtime_ns != stamp
    # `convert check --text`: logits compared on the file's tokens, windows of the run's context.
    text = tmp_path / "t.txt"
    text.write_text("def add(a, b):\n    return a + b\n\nThe quick brown fox jumps over the lazy dog. " * 6)
    ids = build_tokenizer(DataConfig()).tokenize(text.read_text())
    assert torch.equal(text_tokens(run, str(text), max_rows=3), torch.tensor(ids[:48]).view(3, 16))
    capsys.readouterr()
    assert gm_main(["convert", "check", run, str(hf), "--text", str(text)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["ok"] and res["tokens"] == [4, 16] and res["text"] == str(text)
