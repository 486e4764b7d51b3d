"""Looping a block (docs/method.md §10, docs/looping.md): native megatron and Hugging Face paths.

References: the plain model (r = 1), the unrolled model built by the growth machinery from the
loop's source map (same weights, untied), the native looped model for the HF wrapper, and
generation without a cache for generation with one.
"""

import os

import pytest
import torch

from engine_helpers import narrow_model, random_batch
from grow_megatron.config.base import ConfigError
from grow_megatron.config.loop import LoopSpec
from grow_megatron.config.training import OptimConfig
from grow_megatron.convert.looping import loop_hf_model
from grow_megatron.engine.build import build_engine, run_microbatches
from grow_megatron.engine.grow import grow
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import Growth
from grow_megatron.model.looping import apply_loop_to_engine

V, S, DEPTH = 96, 12, 6


def _batch(seed, b=2):
    return random_batch(seed, V, S, b)


def _engine(ln_scaling=True):
    model = narrow_model(DEPTH, V, S, ln_scaling=ln_scaling, kernels="off")
    spec = engine_spec(model, V, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0))
    torch.manual_seed(0)
    return build_engine(spec, DEPTH)


def _copy_weights(dst, src):
    """dst's parameters := src's (fp32: the optimizer's main params are views of them)."""
    with torch.no_grad():
        for (n, p), (m, q) in zip(src.named_parameters(), dst.named_parameters()):
            assert n == m
            q.copy_(p)


def _logits(engine, batch):
    chunk = engine.chunks[0]
    with torch.no_grad():
        return chunk(batch["tokens"], batch["position_ids"], None)  # [b, s, V]


@pytest.mark.parametrize(
    "text,why",
    [
        ("3:3x2", "empty block"),
        ("2:7x2", "past the model's depth 6"),
        ("2:4x0", "R must be >= 1"),
        ("2-4x2", "must look like"),
        ("-1:2x2", "START must be >= 0"),
    ],
)
def test_loop_spec_errors_are_one_line(text, why):
    with pytest.raises(ConfigError) as err:
        LoopSpec.parse(text, depth=DEPTH)
    assert why in str(err.value) and "\n" not in str(err.value) and "--loop" in str(err.value)


def loop_growths(loop: LoopSpec, depth: int) -> list[Growth]:
    """The growth steps whose composed source map is a loop's unrolled order: repeats-1
    insertions of a copy of [start, end) right after the previous copy. The unrolled model they
    build (untied) is the reference the looped model must equal."""
    b = loop.block_size
    return [
        Growth(depth + k * b, loop.start, b, loop.end + k * b, operator=f"loop {loop}") for k in range(loop.repeats - 1)
    ]


def test_loop_spec_positions_match_the_composed_growths():
    spec = LoopSpec.parse("12:16x3", depth=24)
    assert spec.unrolled_depth(24) == 32
    assert spec.source_map(24) == tuple(range(16)) + tuple(range(12, 16)) * 2 + tuple(range(16, 24))
    # The growth machinery's source maps, composed, give the same unrolled order.
    order = list(range(24))
    for g in loop_growths(spec, 24):
        order = [order[i] for i in g.source_map]
    assert tuple(order) == spec.source_map(24)
    assert spec.extra_positions() == [[16, 17, 18, 19], [20, 21, 22, 23]]


def test_r1_is_bit_identical_and_remove_restores_the_plain_model(engine_env):
    e = _engine()
    b = _batch(0)
    plain = _logits(e, b)
    h = apply_loop_to_engine(e, LoopSpec(2, 4, 1))
    assert torch.equal(_logits(e, b), plain)
    h.remove()
    h = apply_loop_to_engine(e, LoopSpec(2, 4, 3))
    assert not torch.allclose(_logits(e, b), plain)
    h.remove()
    assert torch.equal(_logits(e, b), plain)


@pytest.mark.parametrize("ln_scaling", [True, False], ids=["ln-scaling", "plain-norms"])
def test_looped_forward_and_grads_equal_the_unrolled_grown_model(engine_env, ln_scaling):
    spec = LoopSpec(2, 4, 3)
    looped = _engine(ln_scaling)
    unrolled = _engine(ln_scaling)
    _copy_weights(unrolled, looped)
    for g in loop_growths(spec, DEPTH):  # untied copies, each at its position (LN-Scaling renumbered)
        unrolled = grow(unrolled, g)
    assert unrolled.depth == spec.unrolled_depth(DEPTH) == 10
    apply_loop_to_engine(looped, spec)
    b = _batch(1)
    assert torch.equal(_logits(looped, b), _logits(unrolled, b))  # exact in fp32

    loss_l = run_microbatches(looped, [b], forward_only=False)
    loss_u = run_microbatches(unrolled, [b], forward_only=False)
    assert torch.equal(loss_l, loss_u)
    tied = {pos: dict(layer.named_parameters()) for pos, layer in looped.layers_by_position().items()}
    copies = {pos: dict(layer.named_parameters()) for pos, layer in unrolled.layers_by_position().items()}
    for j in range(DEPTH):
        for name, p in tied[j].items():
            # The tied parameter's gradient is the sum over every unrolled position applying layer j
            # (summation order differs from autograd's: fp32 tolerance).
            ref = sum(copies[u][name].main_grad for u, src in enumerate(spec.source_map(DEPTH)) if src == j)
            torch.testing.assert_close(p.main_grad, ref, rtol=1e-5, atol=1e-7, msg=f"layer {j} {name}")
    assert any(p.main_grad.abs().sum() > 0 for p in tied[2].values())


# --- Hugging Face ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_run(engine_env, tmp_path_factory):
    """A native LN-Scaling checkpoint with random weights (norm gains too) and its HF model."""
    from grow_megatron.config.run import RunConfig, dump_run_config
    from grow_megatron.convert import load_as_hf
    from grow_megatron.engine.checkpoint import save_checkpoint

    run_dir = tmp_path_factory.mktemp("looprun")
    e = _engine(ln_scaling=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in e.named_parameters():
            p.copy_(
                (1 + 0.3 * torch.randn(p.shape, generator=g))
                if name.endswith("layernorm.weight")
                else 0.1 * torch.randn(p.shape, generator=g)
            )
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(dump_run_config(RunConfig(name="t", run_dir=str(run_dir), model=e.spec.model)))
    save_checkpoint(
        e, os.path.join(run_dir, "checkpoints"), 1, {"growths": [], "name": "t", "stage_steps": [], "operator": "none"}
    )
    model, _ = load_as_hf(str(run_dir))
    return e, model, run_dir


def _nll(logits, tokens):  # logits [b, s, V] predicting tokens[:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1))


def test_hf_looped_nll_equals_native_looped_nll(native_run):
    engine, model, _ = native_run
    spec = LoopSpec(1, 4, 3)
    b = _batch(2)
    with torch.no_grad():
        hf_plain = model(b["tokens"]).logits
        with loop_hf_model(model, spec):
            assert model.config.num_hidden_layers == 12
            hf = model(b["tokens"]).logits
        assert torch.equal(model(b["tokens"]).logits, hf_plain)  # removed: plain again
    handle = apply_loop_to_engine(engine, spec)
    native = _logits(engine, b)
    handle.remove()
    nll_hf, nll_native = _nll(hf, b["tokens"]), _nll(native, b["tokens"])
    assert abs(float(nll_hf) - float(_nll(hf_plain, b["tokens"]))) > 1e-3  # the loop changes the model
    # Same math, folded vs unfolded LN-Scaling gains and different kernels: fp32 ulps.
    torch.testing.assert_close(hf, native, rtol=0, atol=1e-4)
    assert abs(float(nll_hf) - float(nll_native)) < 1e-5


def test_hf_looped_generate_with_cache_equals_without(native_run):
    _, model, _ = native_run
    prompt = _batch(3, b=1)["tokens"][:, :6]
    with torch.no_grad(), loop_hf_model(model, LoopSpec(2, 5, 2)):
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        cached = model.generate(prompt, use_cache=True, **kw)
        plain = model.generate(prompt, use_cache=False, **kw)
        # Each application owns a cache slot: the cache holds the unrolled depth.
        out = model(prompt, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        assert len(cache.layers) == 9
    assert torch.equal(cached, plain)


def test_export_of_a_looped_model_is_the_unrolled_plain_llama(native_run, tmp_path):
    from dataclasses import replace

    from transformers import LlamaForCausalLM

    from grow_megatron.config.loop import LoopConfig
    from grow_megatron.config.run import RunConfig, dump_run_config
    from grow_megatron.convert import to_hf

    engine, _, run_dir = native_run
    spec = LoopSpec(1, 4, 3)
    looped_cfg = tmp_path / "looped.yaml"  # the same checkpoint, read as a loop-adapted run's
    model = replace(engine.spec.model, loop=LoopConfig(spec.start, spec.end, spec.repeats, from_step=0))
    looped_cfg.write_text(dump_run_config(RunConfig(name="t", run_dir=str(run_dir), model=model)))
    info = to_hf(str(run_dir), str(tmp_path / "hf"), config=str(looped_cfg), tokenizer=False, progress=False)
    assert info["depth"] == spec.unrolled_depth(DEPTH) == 12
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()  # a plain Llama: copies, no wrapper
    assert hf.config.num_hidden_layers == 12
    for u, j in enumerate(spec.source_map(DEPTH)):
        if spec.start <= j < spec.end:  # the repeated applications are copies of the block (at positions j)
            assert torch.equal(hf.model.layers[u].mlp.down_proj.weight, hf.model.layers[j].mlp.down_proj.weight)
    b = _batch(4)
    handle = apply_loop_to_engine(engine, spec)
    native = _logits(engine, b)
    handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(hf(b["tokens"]).logits, native, rtol=0, atol=1e-4)


def test_flops_count_the_unrolled_depth_from_from_step():
    from grow_megatron.config.model import ModelConfig
    from grow_megatron.growth import flops as F

    shape = ModelConfig(
        num_layers=12,
        hidden_size=128,
        ffn_hidden_size=352,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=4096,
        seq_length=128,
    )
    looped = F.with_loop(F.static_flops(shape, 160, 2048), shape, from_step=140, unrolled_depth=20)

    def per_token(L):  # docs/method.md §6 by hand: 6 N + 12 L s d, N = L (2d^2 + 2 d d_kv + 3 d f) + V d
        d, dkv, f = 128, 64, 352
        return 6 * (L * (2 * d * d + 2 * d * dkv + 3 * d * f) + 4096 * d) + 12 * L * 128 * d

    assert [(s.depth, s.steps) for s in looped.stages] == [(12, 140), (20, 20)]
    assert looped.flops == 2048 * (140 * per_token(12) + 20 * per_token(20))


def test_sweep_default_blocks_follow_the_growth_history():
    from grow_megatron.eval.loop_sweep import default_blocks, history_blocks
    from grow_megatron.growth.operators import lidas

    # The tiny LIDAS run: 4 -> 8 (copies 0..3 to 4..7), 8 -> 12 (copies 2..5 to 6..9).
    history = {"growths": [{"step": 2, **lidas(4, 4).to_dict()}, {"step": 5, **lidas(8, 4).to_dict()}]}
    # 4..7 of the first growth are cut in two by the second insertion (at 6): not a block any more.
    assert history_blocks(history) == [(0, 4), (2, 6), (6, 10)]
    assert default_blocks(12, history) == [(0, 4), (2, 6), (6, 10)]
    assert default_blocks(12, None) == [(4, 8)]  # no history: the b layers around the middle (LIDAS)
    assert default_blocks(24, {"growths": []}, block_size=4) == [(10, 14)]


def test_sweep_table_and_heatmap(tmp_path):
    from grow_megatron.eval.loop_sweep import heatmap, table

    rows = [
        {
            "block": None,
            "repeats": 1,
            "loop": None,
            "unrolled_depth": 6,
            "primitives": {"t": 0.2},
            "accuracy": 0.2,
            "mean_nll": 5.0,
        }
    ]
    rows += [
        {
            "block": [1, 3],
            "repeats": r,
            "loop": f"1:3x{r}",
            "unrolled_depth": 6 + 2 * (r - 1),
            "primitives": {"t": 0.1 * r},
            "accuracy": 0.1 * r,
            "mean_nll": 5.0 + r,
        }
        for r in (2, 3)
    ]
    result = {"tasks": ["t"], "blocks": [[1, 3]], "repeats": [1, 2, 3], "rows": rows}
    md = table(result).splitlines()
    assert md[2].startswith("| plain (baseline) | 6 | 20.0 | 20.0 | 5.0000 |")
    assert md[4] == "| 1:3x3 | 10 | 30.0 | 30.0 | 8.0000 |"
    assert os.path.getsize(heatmap(result, str(tmp_path / "h.png"))) > 1000


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "MODEL", "--loop", "3:3x2"],
        ["loop-sweep", "MODEL", "--out", "x", "--repeats", "0,2"],
        ["analyze", "depth-score", "MODEL", "--out", "x", "--loop", "2:4x"],
    ],
)
def test_cli_loop_errors_are_one_line_before_loading(argv, capsys, tmp_path):
    from grow_megatron.cli import main

    argv = [str(tmp_path / "nothing") if a == "MODEL" else str(tmp_path / a) if a == "x" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("--loop" in err or "--repeats" in err), err


class _CharTokenizer:
    """Enough of a tokenizer for held-out NLL: one id per character (mod V)."""

    eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % V for c in text]}


def test_sweep_scores_each_loop_and_leaves_the_model_plain(native_run, tmp_path):
    from grow_megatron.eval import scoring
    from grow_megatron.eval.loop_sweep import SweepConfig, sweep

    _, model, _ = native_run
    text = tmp_path / "heldout.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 12)
    cfg = SweepConfig(blocks=[(1, 4)], repeats=[1, 3], tasks=[], heldout=[str(text)], seq_length=S, batch_size=4)
    with torch.no_grad():
        plain_logits = model(_batch(5)["tokens"]).logits
        res = sweep(model, _CharTokenizer(), cfg, progress=False)
        # The model is plain again after the sweep.
        assert model.config.num_hidden_layers == DEPTH and torch.equal(model(_batch(5)["tokens"]).logits, plain_logits)
        batches = scoring.chunk_tokens([ord(c) % V for c in text.read_text()], S + 1, 4)
        direct = {}
        for r in (1, 3):
            with loop_hf_model(model, LoopSpec(1, 4, r)):
                direct[r] = scoring.heldout_nll(scoring.hf_logits_fn(model), batches).nll
    assert [(row["loop"], row["unrolled_depth"]) for row in res["rows"]] == [(None, DEPTH), ("1:4x3", 12)]
    assert [row["mean_nll"] for row in res["rows"]] == [direct[1], direct[3]]
    assert direct[1] != direct[3]
