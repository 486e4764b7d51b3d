"""The fast paths of the analyses (shared-prompt packing, resumed residual streams) give the
numbers of a naive recomputation: every (example, choice) row run through a full Hugging Face
forward of the reordered model."""

import pytest
import torch

from grow_megatron.analysis.data import encode_mc, mc_batches
from grow_megatron.analysis.interventions import InterventionConfig, intervention_analysis, intervention_scores
from grow_megatron.analysis.runner import ResidualRunner
from grow_megatron.analysis.toy import char_tokenizer, tiny_llama
from grow_megatron.eval.tasks import MCExample

pytestmark = pytest.mark.usefixtures("one_thread")

# fp32 sums of a few per-token log-probabilities (|log p| ~ 5): rounding is ~1e-6 per term.
TOL = 1e-4


def _tasks() -> list[MCExample]:
    """Ragged on purpose: 2-5 choices of 1-3 characters, prompts of different lengths."""
    prompts = ["a=1; b=2; a=?", "x=7; y=3; z=1; y=?", "q=5; q=?", "m=2; n=8; o=4; p=6; n=?", "k=9; k=?"]
    choices = [
        (" 1", " 2"),
        (" 3", " 13", " 7"),
        (" 5", " 55", " 555", " 0"),
        (" 8", " 2", " 4", " 6", " 86"),
        (" 9", " 19", " 91"),
    ]
    return [MCExample(p, c, i % len(c), "toy") for i, (p, c) in enumerate(zip(prompts, choices))]


def _naive_scores(model, enc, order) -> torch.Tensor:
    """Sum of log p(choice tokens) per row, one full HF forward per row of the model whose
    decoder runs the layers in `order` (independent of the runner and of the packing)."""
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([layers[i] for i in order])
    try:
        out = []
        for seq, start in zip(enc.seqs, enc.starts):
            ids = torch.tensor([seq])
            logp = torch.log_softmax(model(ids, use_cache=False).logits[0].double(), -1)  # (T,V)
            out.append(sum(float(logp[t - 1, seq[t]]) for t in range(start, len(seq))))
        return torch.tensor(out, dtype=torch.float64)
    finally:
        model.model.layers = layers


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@torch.no_grad()
def test_packed_interventions_equal_naive_recomputation(attn):
    m = tiny_llama(layers=5, hidden=24, heads=3, kv_heads=1, vocab=61, seed=3)
    m.set_attn_implementation(attn)
    tok = char_tokenizer()
    # max_length 12 cuts some prompts, differently for choices of different lengths.
    enc = encode_mc(_tasks(), tok, max_length=12)
    assert len({tuple(s[:p]) for s, p, e in zip(enc.seqs, enc.starts, enc.example) if e == 3}) > 1
    cfg = InterventionConfig(swap_sizes=[1, 2], skip_sizes=[1, 3], reverse_sizes=[3], batch_size=3)
    base, scores, flat = intervention_scores(ResidualRunner(m), enc, cfg, progress=False)
    assert len(flat) == 4 + 2 + 5 + 3 + 3
    assert (base.double() - _naive_scores(m, enc, range(5))).abs().max() < TOL
    for j, (kind, k, s, order) in enumerate(flat):
        want = _naive_scores(m, enc, order)
        assert (scores[j].double() - want).abs().max() < TOL, (kind, k, s)
    # Not vacuous: the interventions do change the scores.
    assert (scores - base).abs().max() > 1e-2


def test_packing_runs_each_prompt_once():
    tok = char_tokenizer()
    enc = encode_mc(_tasks(), tok)
    packed, plain = mc_batches(enc, 2), mc_batches(enc, 2, pack=False)
    assert sorted(r for b in packed for r in b.rows) == list(range(len(enc.seqs)))
    n_packed = sum(int(b.batch.lengths.sum()) for b in packed)
    prompts = sum(enc.starts[i] for i in range(len(enc.seqs)) if enc.choice[i] == 0)
    conts = sum(len(s) - p for s, p in zip(enc.seqs, enc.starts))
    assert n_packed == prompts + conts
    assert sum(int(b.batch.lengths.sum()) for b in plain) == sum(map(len, enc.seqs))


def test_intervention_accuracy_unchanged_by_packing():
    m = tiny_llama(layers=4, hidden=24, heads=3, kv_heads=1, vocab=61, seed=4)
    enc = encode_mc(_tasks(), char_tokenizer())
    cfg = InterventionConfig(swap_sizes=[1], skip_sizes=[1], reverse_sizes=[], batch_size=4)
    r = ResidualRunner(m)
    base_p, sc_p, _ = intervention_scores(r, enc, cfg, progress=False)
    base_u, sc_u, _ = intervention_scores(r, enc, cfg, progress=False, pack=False)
    assert (base_p - base_u).abs().max() < TOL and (sc_p - sc_u).abs().max() < TOL
    res = intervention_analysis(r, enc, cfg, progress=False)
    assert 0 <= res["baseline_accuracy"] <= 1


def test_quick_preset_and_cost_line(tmp_path, capsys):
    """--quick fills in the preset, an explicit option wins over it, and the cost estimate is
    printed before the work."""
    import json

    from grow_megatron.analysis.toy import toy_tasks
    from grow_megatron.cli.analyze import main as analyze_main

    model = tmp_path / "tiny"
    tiny_llama(layers=4, vocab=64).save_pretrained(model)
    char_tokenizer().save_pretrained(model)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps({"prompt": e.prompt, "choices": list(e.choices), "answer": e.answer}) for e in toy_tasks(3)
        )
    )
    out = tmp_path / "out"
    assert (
        analyze_main(
            ["interventions", str(model), "--tasks", str(tasks), "--out", str(out), "--quick", "--skip-sizes", "1"]
        )
        == 0
    )
    cfg = json.loads((out / "interventions.json").read_text())["config"]
    assert cfg["swap_sizes"] == [1, 2, 4] and cfg["reverse_sizes"] == [4] and cfg["skip_sizes"] == [1]
    err = capsys.readouterr().err
    assert "[analyze] interventions on tiny: 3 examples (12 choices" in err and "estimated" in err
    res = json.loads((out / "interventions.json").read_text())["models"]["tiny"]
    assert res["chance_accuracy"] == pytest.approx(0.25) and res["examples"] == 3
