"""Tuned lens properties and a CLI smoke test on a saved tiny model."""

import json

import numpy as np
import pytest
import torch

from grow_megatron.analysis.data import encode_mc, token_batches
from grow_megatron.analysis.lens import (
    LensConfig,
    TunedLens,
    early_exit_accuracy,
    evaluate_lens,
    lens_logits,
    train_lens,
)
from grow_megatron.analysis.runner import ResidualRunner
from grow_megatron.analysis.toy import char_tokenizer, tiny_llama, toy_tasks
from grow_megatron.cli.analyze import main as analyze_main

# Tiny matmuls: extra threads only add synchronisation overhead on a shared 2-core box.
pytestmark = pytest.mark.usefixtures("one_thread")


def _seqs(n=12, T=16, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, T), generator=g)


def test_lens_last_layer_is_exact_and_training_helps(tmp_path):
    m = tiny_llama(layers=4, vocab=64)
    r = ResidualRunner(m)
    batches = token_batches(_seqs(), 4)
    ids = batches[0].ids
    with torch.no_grad():
        hs, _ = r.hidden_states(ids)
        # Identity translator on the last layer's output reproduces the model's distribution.
        assert torch.equal(lens_logits(r, TunedLens(4, 32), 3, hs[-1]), m(ids).logits)
    before = evaluate_lens(r, None, batches, progress=False)
    lens = train_lens(r, batches, LensConfig(steps=25), progress=False)
    after = evaluate_lens(r, lens, batches, progress=False)
    assert after["kl"][-1] == pytest.approx(0.0, abs=1e-6) and after["top_k_overlap"][-1] == 1.0
    assert after["kl"][0] < before["kl"][0] and after["kl"][1] < before["kl"][1]
    # The model is untouched: trainable again afterwards, no gradients left on it.
    assert all(p.requires_grad and p.grad is None for p in m.parameters())
    # Save / load round trip.
    lens.save(str(tmp_path / "lens.pt"), {"model": "tiny"})
    back = TunedLens.load(str(tmp_path / "lens.pt"))
    assert torch.equal(back.A, lens.A.detach()) and torch.equal(back.c, lens.c.detach())


def test_early_exit_last_layer_equals_full_model():
    m = tiny_llama(layers=3, vocab=64, seed=2)
    r = ResidualRunner(m)
    enc = encode_mc(toy_tasks(8), char_tokenizer())
    res = early_exit_accuracy(r, TunedLens(3, 32), enc, batch_size=16, progress=False)
    assert len(res["accuracy"]) == 3
    assert res["accuracy"][-1] == res["final_accuracy"]


def _save_tiny(path):
    tiny_llama(layers=4, vocab=64).save_pretrained(path)
    char_tokenizer().save_pretrained(path)


def test_cli_writes_json_and_png(tmp_path):
    model = tmp_path / "tiny"
    _save_tiny(model)
    np.save(tmp_path / "ids.npy", _seqs(n=6).numpy())
    out = tmp_path / "out"
    rc = analyze_main(
        [
            "sublayer",
            str(model),
            str(model),
            "--labels",
            "a",
            "b",
            "--data",
            str(tmp_path / "ids.npy"),
            "--out",
            str(out),
            "--block-size",
            "2",
            "--batch-size",
            "3",
            "--quiet",
        ]
    )
    assert rc == 0
    res = json.loads((out / "sublayer.json").read_text())
    assert res["config"]["block_size"] == 2 and set(res["models"]) == {"a", "b"}
    assert len(res["models"]["a"]["attn_rel"]) == 4 and res["models"]["a"]["tokens"] == 6 * 16
    assert (out / "sublayer.png").stat().st_size > 1000
    rc = analyze_main(["block-similarity", str(model), "--out", str(out), "--block-size", "2", "--quiet"])
    assert rc == 0 and (out / "block-similarity.png").exists()
    assert json.loads((out / "block_similarity.json").read_text())["models"]["tiny"]["similarity"][0][
        0
    ] == pytest.approx(1.0)
    # Tuned lens: train, save, then evaluate the saved lens instead of training again.
    ids = str(tmp_path / "ids.npy")
    assert analyze_main(["tuned-lens", str(model), "--data", ids, "--out", str(out), "--steps", "2", "--quiet"]) == 0
    first = json.loads((out / "tuned_lens.json").read_text())["models"]["tiny"]
    assert (
        analyze_main(
            [
                "tuned-lens",
                str(model),
                "--data",
                ids,
                "--out",
                str(out / "again"),
                "--lens",
                first["lens_path"],
                "--quiet",
            ]
        )
        == 0
    )
    again = json.loads((out / "again" / "tuned_lens.json").read_text())["models"]["tiny"]
    assert again["kl"] == pytest.approx(first["kl"]) and again["kl"][-1] == 0.0
    # Missing inputs are a one-line error, not a traceback.
    assert analyze_main(["interventions", str(model), "--out", str(out), "--quiet"]) == 2


def test_cli_rejects_bad_options_in_one_line(tmp_path, capsys):
    assert analyze_main(["effects", str(tmp_path), "--out", str(tmp_path / "o"), "--parts", "head"]) == 2
    assert "effects.parts" in capsys.readouterr().err
    assert analyze_main(["nonsense"]) == 2
    assert analyze_main(["--help"]) == 0


def test_compare_report_covers_all_analyses(tmp_path):
    model = tmp_path / "tiny"
    _save_tiny(model)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps({"prompt": e.prompt, "choices": list(e.choices), "answer": e.answer}) for e in toy_tasks(3)
        )
    )
    out = tmp_path / "cmp"
    sets = [
        "tuned-lens.steps=2",
        "tuned-lens.max_sequences=3",
        "depth-score.max_sequences=2",
        "effects.max_sequences=2",
        "effects.parts=[layer]",
        "sublayer.max_sequences=2",
        "interventions.swap_sizes=[1]",
        "interventions.skip_sizes=[1]",
        "interventions.reverse_sizes=[4]",
        "block-similarity.block_size=2",
    ]
    argv = [
        "compare",
        str(model),
        str(model),
        "--labels",
        "base",
        "grown",
        "--tasks",
        str(tasks),
        "--out",
        str(out),
        "--quiet",
        "--mark-blocks",
        "2",
    ]
    for s in sets:
        argv += ["--set", s]
    assert analyze_main(argv) == 0
    report = (out / "report.md").read_text()
    for name in ("depth_score", "tuned_lens", "interventions", "sublayer", "effects", "block_similarity"):
        assert (out / f"{name}.json").exists() and f"{name}.json" in report
    for fig in (
        "depth-score.png",
        "tuned-lens.png",
        "interventions.png",
        "sublayer.png",
        "effects_output.png",
        "effects_layer_future.png",
        "block-similarity.png",
    ):
        assert (out / fig).exists() and fig in report
    ee = json.loads((out / "tuned_lens.json").read_text())["models"]["base"]["early_exit"]
    assert ee["accuracy"][-1] == ee["final_accuracy"]


def test_prompts_longer_than_the_context_are_named(capsys):
    """A prompt past the model's context measures extrapolation: one warning line with the
    count and the context, counted with the model's own tokenizer; none when all fit."""
    from types import SimpleNamespace

    from grow_megatron.analysis.run import warn_over_context

    model, tok = tiny_llama(layers=2, vocab=64), char_tokenizer()
    tasks = toy_tasks(n=6)
    lengths = [len(tok(ex.prompt + max(ex.choices, key=len))["input_ids"]) for ex in tasks]
    ctx = max(lengths) - 1  # the longest prompts do not fit
    model.config.max_position_embeddings = ctx
    over = warn_over_context(tasks, SimpleNamespace(model=model, tokenizer=tok), "tiny")
    err = capsys.readouterr().err.strip().splitlines()
    assert over == sum(n > ctx for n in lengths) > 0
    assert len(err) == 1 and f"{over} of 6 task prompts of tiny are longer than its context of {ctx} tokens" in err[0]
    model.config.max_position_embeddings = max(lengths)
    assert warn_over_context(tasks, SimpleNamespace(model=model, tokenizer=tok), "tiny") == 0
    assert capsys.readouterr().err == ""
