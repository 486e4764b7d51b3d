"""Hand-checkable properties of the depth analyses on tiny random Llama models."""

import pytest
import torch

from grow_megatron.analysis.data import encode_mc, token_batches
from grow_megatron.analysis.effects import (
    DepthScoreConfig,
    EffectsConfig,
    depth_score,
    depth_score_analysis,
    effects_analysis,
)
from grow_megatron.analysis.interventions import InterventionConfig, intervention_analysis
from grow_megatron.analysis.runner import ResidualRunner, Skip, reverse_order, swap_order
from grow_megatron.analysis.similarity import SimilarityConfig, block_similarity
from grow_megatron.analysis.sublayer import SublayerConfig, sublayer_analysis
from grow_megatron.analysis.toy import char_tokenizer, grow_by_source_map, tiny_llama, toy_tasks
from grow_megatron.growth.operators import lidas, midas

# Tiny matmuls: extra threads only add synchronisation overhead on a shared 2-core box.
pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(n=4, T=12, vocab=96, seed=0, bs=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, T), generator=g)
    rows = [r[: T - (i % 3)] for i, r in enumerate(ids.tolist())]  # ragged: exercises padding
    return token_batches(rows, bs)


def _zero_outputs(model, layer):
    with torch.no_grad():
        model.model.layers[layer].self_attn.o_proj.weight.zero_()
        model.model.layers[layer].mlp.down_proj.weight.zero_()


def test_runner_reproduces_hf_logits():
    m = tiny_llama(layers=5)
    ids = torch.randint(0, 128, (3, 11))
    with torch.no_grad():
        assert (ResidualRunner(m).run(ids) - m(ids).logits).abs().max() < 1e-5


def test_runner_padding_does_not_change_real_tokens():
    m = tiny_llama(layers=3)
    r = ResidualRunner(m)
    (tb,) = token_batches([[5, 6, 7, 8, 9], [5, 6, 7]], 2)
    with torch.no_grad():
        full = r.run(tb.ids)
        alone = m(torch.tensor([[5, 6, 7]])).logits
    assert (full[1, :3] - alone[0]).abs().max() < 1e-5


def test_zero_output_layer_has_no_effect_and_no_depth_mass():
    m = tiny_llama(layers=4)
    _zero_outputs(m, 2)
    r = ResidualRunner(m)
    batches = _batches()
    ds = depth_score_analysis(r, batches, DepthScoreConfig(), progress=False)
    assert ds["mean_dout"][2] == 0.0
    # The last layer cannot reach future tokens (no later layer reads its output), so its
    # future effect is exactly 0 too; every other layer matters.
    assert ds["mean_dout"][3] == 0.0 and ds["mean_dout"][0] > 0 and ds["mean_dout"][1] > 0
    assert ds["depth_score"] == pytest.approx(ds["mean_dout"][1] / (ds["mean_dout"][0] + ds["mean_dout"][1]))
    eff = effects_analysis(r, batches, EffectsConfig(local=True), progress=False)
    for key in ("layer/current", "layer/future"):
        e = eff["effects"][key]
        assert e["output_max"][2] == 0.0
        # Relative changes compare against c_l = h_{l+1} - h_l, exact only up to rounding.
        assert max(e["propagated"][2]) < 1e-5 and max(e["local"][2]) < 1e-5
        assert e["output_max"][1] > 0 and max(e["propagated"][1][2:]) > 0
    for key in ("attn/current", "mlp/current", "attn/future", "mlp/future"):  # both sublayers are zero
        assert eff["effects"][key]["output_max"][2] == 0.0
        assert eff["effects"][key]["output_max"][1] > 0


def test_depth_score_is_centre_of_mass():
    e = [0.5, 0.0, 1.5, 2.0]
    assert depth_score(e) == pytest.approx((0 * 0.5 + 2 * 1.5 + 3 * 2.0) / 4.0)
    assert depth_score([0, 0, 3]) == pytest.approx(2.0)


def test_local_effect_matches_direct_computation():
    m = tiny_llama(layers=4, seed=3)
    r = ResidualRunner(m)
    (tb,) = _batches(n=2, bs=2)
    eff = effects_analysis(r, [tb], EffectsConfig(parts=["layer"], modes=["current"]), progress=False)
    # Independent: subtract layer 0's output change from layer 2's input, via HF hidden states.
    with torch.no_grad():
        hs = m(tb.ids, output_hidden_states=True).hidden_states
        ctx = r.context(hs[0])
        c0 = hs[1] - hs[0]
        new = sum(r.contributions(2, hs[2] - c0, ctx))
        old = hs[3] - hs[2]
        rel = (new - old).norm(dim=-1) / old.norm(dim=-1)
        want = rel[tb.valid()].max().item()
    assert eff["effects"]["layer/current"]["local"][0][2] == pytest.approx(want, rel=1e-4)
    # Local and propagated coincide for the immediately following layer.
    e = eff["effects"]["layer/current"]
    assert e["local"][0][1] == pytest.approx(e["propagated"][0][1], rel=1e-5)


def test_swap_identical_layers_changes_nothing():
    m = tiny_llama(layers=4)
    m.model.layers[2].load_state_dict(m.model.layers[1].state_dict())
    r = ResidualRunner(m)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(r.run(ids, order=swap_order(4, 1, 1)), r.run(ids))


def test_reverse_twice_restores_logits():
    m = tiny_llama(layers=6)
    r = ResidualRunner(m)
    ids = torch.randint(0, 128, (2, 9))
    twice = reverse_order(6, 1, 4, base=reverse_order(6, 1, 4))
    assert twice == list(range(6))
    with torch.no_grad():
        once = r.run(ids, order=reverse_order(6, 1, 4))
        assert (r.run(ids, order=twice) - m(ids).logits).abs().max() < 1e-5
        assert (once - m(ids).logits).abs().max() > 1e-3


def test_interventions_accuracy_shapes_and_identity():
    m = tiny_llama(layers=8, vocab=64)
    # Make layers 2,3 equal to 4,5: swapping the windows [2,4) and [4,6) is then a no-op.
    for i in (2, 3):
        m.model.layers[i + 2].load_state_dict(m.model.layers[i].state_dict())
    tok = char_tokenizer()
    enc = encode_mc(toy_tasks(6), tok)
    cfg = InterventionConfig(swap_sizes=[1, 2, 4, 8], skip_sizes=[1, 2], reverse_sizes=[4], batch_size=8)
    res = intervention_analysis(ResidualRunner(m), enc, cfg, progress=False)
    iv = res["interventions"]
    assert iv["swap"]["1"]["starts"] == list(range(7)) and iv["swap"]["4"]["starts"] == [0]
    assert "8" not in iv["swap"]  # 2k > L
    assert iv["reverse"]["4"]["starts"] == list(range(5)) and iv["skip"]["2"]["starts"] == list(range(7))
    assert iv["swap"]["2"]["accuracy"][2] == res["baseline_accuracy"]


def test_mc_scoring_matches_the_evaluator():
    """Per-choice log-likelihoods equal grow_megatron.eval.scoring's (an independent path)."""
    from grow_megatron.analysis.data import accuracy, choice_logliks, mc_batches
    from grow_megatron.eval.scoring import hf_scorer

    m = tiny_llama(layers=2, vocab=64)
    tok = char_tokenizer()
    tasks = toy_tasks(4)
    r = ResidualRunner(m)
    for add_bos in (False, True):
        enc = encode_mc(tasks, tok, add_bos=add_bos)
        scores = torch.zeros(len(enc.seqs))
        with torch.no_grad():
            for mb in mc_batches(enc, 5):
                h = r.run(mb.batch.ids, return_hidden=True, position_ids=mb.position_ids, segments=mb.segments)
                scores[torch.tensor(mb.rows)] = choice_logliks(h, mb, r.unembed)
        want = [s for ex in hf_scorer(m, tok, batch_size=3, add_bos=add_bos).score(tasks) for s in ex]
        assert scores.tolist() == pytest.approx(want, abs=1e-4)
        assert 0.0 <= accuracy(enc, scores) <= 1.0


def test_sublayer_stats_match_hooked_activations():
    m = tiny_llama(layers=3, seed=1)
    batches = _batches(n=3, bs=2)
    res = sublayer_analysis(ResidualRunner(m), batches, SublayerConfig(), progress=False)
    # Independent path: forward hooks on the HF modules during an ordinary forward.
    got = {}
    hooks = []
    for i, blk in enumerate(m.model.layers):
        hooks.append(
            blk.register_forward_pre_hook(
                lambda mod, args, kw, i=i: got.__setitem__(
                    ("h", i), kw.get("hidden_states", args[0] if args else None)
                ),
                with_kwargs=True,
            )
        )
        hooks.append(
            blk.self_attn.register_forward_hook(
                lambda mod, args, kw, out, i=i: got.__setitem__(("a", i), out[0]), with_kwargs=True
            )
        )
        hooks.append(blk.mlp.register_forward_hook(lambda mod, args, out, i=i: got.__setitem__(("m", i), out)))
    rel = torch.zeros(3, 2)
    cos = torch.zeros(3, 2)
    n = 0
    with torch.no_grad():
        for tb in batches:
            m(tb.ids)
            v = tb.valid()
            for i in range(3):
                h, a, mm = got[("h", i)], got[("a", i)], got[("m", i)]
                rel[i, 0] += (a.norm(dim=-1) / h.norm(dim=-1))[v].sum()
                cos[i, 0] += torch.cosine_similarity(a, h, dim=-1)[v].sum()
                rel[i, 1] += (mm.norm(dim=-1) / (h + a).norm(dim=-1))[v].sum()
                cos[i, 1] += torch.cosine_similarity(mm, h + a, dim=-1)[v].sum()
            n += int(v.sum())
    for hk in hooks:
        hk.remove()
    assert res["attn_rel"] == pytest.approx((rel[:, 0] / n).tolist(), rel=1e-4)
    assert res["attn_cos"] == pytest.approx((cos[:, 0] / n).tolist(), abs=1e-5)
    assert res["mlp_rel"] == pytest.approx((rel[:, 1] / n).tolist(), rel=1e-4)
    assert res["mlp_cos"] == pytest.approx((cos[:, 1] / n).tolist(), abs=1e-5)


def test_block_similarity_after_midas_growth():
    m = tiny_llama(layers=8)
    g = grow_by_source_map(m, midas(8, 4).source_map)  # [0,1,2,3, 0,1,2,3, 4,5,6,7]
    sim = torch.tensor(block_similarity(g, SimilarityConfig(block_size=4))["similarity"])
    assert sim.shape == (3, 3)
    assert sim[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    assert abs(sim[0, 2].item()) < 0.5 and abs(sim[1, 2].item()) < 0.5
    # LIDAS L=8 b=4 copies layers 2..5 after 5: blocks aligned at offset 2 hold the copied pair.
    gl = grow_by_source_map(m, lidas(8, 4).source_map)
    siml = block_similarity(gl, SimilarityConfig(block_size=4, offset=2))["similarity"]
    assert siml[0][1] == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # the grown model runs
        ResidualRunner(g).run(torch.randint(0, 128, (1, 5)))


def test_future_skip_matches_hf_forward_hooks():
    """Skipping at positions <= t through the runner equals editing HF module outputs by hooks."""
    from grow_megatron.analysis.effects import BoundaryConfig, settings

    m = tiny_llama(layers=4, seed=5)
    (tb,) = token_batches([list(range(3, 13)), list(range(20, 27))], 2)
    skip, meas = settings(tb, "future", BoundaryConfig(boundaries=[0.5]))[0]
    # t = floor(0.5 * (len - 1)): 4 for length 10, 3 for length 7.
    assert skip[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4] and meas[0].nonzero().flatten().tolist() == [
        5,
        6,
        7,
        8,
        9,
    ]
    assert skip[1].nonzero().flatten().tolist() == [0, 1, 2, 3] and meas[1].nonzero().flatten().tolist() == [4, 5, 6]
    keep = (~skip).unsqueeze(-1).float()
    r = ResidualRunner(m)
    with torch.no_grad():
        # Layer skip: the layer's output equals its input at skipped positions.
        h = m.model.layers[1].register_forward_hook(
            lambda mod, args, kw, out: kw.get("hidden_states", args[0] if args else None) * (1 - keep) + out * keep,
            with_kwargs=True,
        )
        want = m(tb.ids).logits
        h.remove()
        got = r.run(tb.ids, skips=[Skip(1, "layer", skip)])
        assert (got - want).abs().max() < 1e-5
        # Attention-only skip.
        h = m.model.layers[2].self_attn.register_forward_hook(lambda mod, args, out: (out[0] * keep, out[1]))
        want = m(tb.ids).logits
        h.remove()
        got = r.run(tb.ids, skips=[Skip(2, "attn", skip)])
        assert (got - want).abs().max() < 1e-5
        assert (got - m(tb.ids).logits).abs().max() > 1e-4
