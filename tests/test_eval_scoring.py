"""MC scoring and held-out NLL against direct computations on a tiny random HF Llama, and the
`grow-megatron eval` command end to end on a saved tiny model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from grow_megatron.eval import primitives as P
from grow_megatron.eval import scoring as S
from grow_megatron.eval.tasks import MCExample

transformers = pytest.importorskip("transformers")


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # A byte-level BPE trained on primitive text: merges across words and digits exercise
    # the context/continuation split the way a real BPE tokenizer does.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [ex.prompt for t in P.TASKS for ex in P.generate(t, 10, seed=99)]
    tok.train_from_iterator(corpus, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    cfg = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    return model, tokenizer


def _hand_score(model, tokenizer, prompt: str, choice: str) -> float:
    """Sum of log p(choice tokens | prompt), one unpadded sequence, no helper code."""
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    return sum(float(logp[p - 1, whole[p]]) for p in range(len(ctx), len(whole)))


def test_mc_scores_equal_hand_computation(tiny):
    model, tokenizer = tiny
    one_shot = P.PrimitivesConfig(num_shots=1)  # short prompts keep the test fast
    examples = [
        P.make_example("varassign_math", 0, 0, one_shot),
        P.make_example("copying_words", 0, 1, one_shot),
        MCExample("Fill in blank:\n\nx=1\nx=", ("1", "12", " 7"), 1, "custom"),
    ]
    # Batch size 4 over 18 requests of different lengths: padding and reordering are exercised.
    scores = S.hf_scorer(model, tokenizer, batch_size=4).score(examples)
    for ex, sc in zip(examples, scores):
        assert len(sc) == len(ex.choices)
        for choice, got in zip(ex.choices, sc):
            assert got == pytest.approx(_hand_score(model, tokenizer, ex.prompt, choice), abs=1e-5)


def test_batch_size_invariance_and_bos(tiny):
    model, tokenizer = tiny
    examples = P.generate("copying_random", 2, 0, P.PrimitivesConfig(num_shots=1))
    a = S.hf_scorer(model, tokenizer, batch_size=1).score(examples)
    b = S.hf_scorer(model, tokenizer, batch_size=64).score(examples)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    c = S.hf_scorer(model, tokenizer, batch_size=8, add_bos=True).score(examples[:1])
    assert c[0] != a[0]  # a different context, so different numbers


def test_continuation_logprobs_generic_callable():
    # A "model" that puts all mass on token (previous + 1): log-probs are 0 or -inf-ish.
    V = 10

    def fn(ids):
        out = torch.full((*ids.shape, V), -1e4)
        out.scatter_(-1, ((ids + 1) % V).unsqueeze(-1), 0.0)
        return out

    got = S.continuation_logprobs(fn, [([1, 2], [3, 4]), ([5], [6]), ([1], [3])], batch_size=2)
    assert got[0] == pytest.approx(0.0, abs=1e-3) and got[1] == pytest.approx(0.0, abs=1e-3)
    assert got[2] < -1e3
    # Left truncation keeps the continuation scored from the same positions.
    assert S.continuation_logprobs(fn, [([0, 0, 0, 1, 2], [3, 4])], max_length=3)[0] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError):
        S.continuation_logprobs(fn, [([], [1])])


def test_encode_pair_moves_trailing_space():
    enc = lambda s: [ord(c) for c in s]  # noqa: E731
    assert S.encode_pair(enc, "a b ", "c") == ([ord("a"), ord(" "), ord("b")], [ord(" "), ord("c")])


def test_heldout_nll_equals_cross_entropy(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, model.config.vocab_size, (3, 17), generator=g),
        torch.randint(0, model.config.vocab_size, (2, 17), generator=g),
    ]
    res = S.heldout_nll(S.hf_logits_fn(model), batches)
    ids = torch.cat(batches)
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert res.tokens == 5 * 16
    assert res.nll == pytest.approx(float(want), abs=1e-5)
    # Standard error of the mean over the 5 windows (each window's mean NLL is one sample).
    per_window = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").double().mean(1)
    assert res.windows == 5
    assert res.stderr == pytest.approx(float(per_window.std() / 5**0.5), rel=1e-4)
    assert S.heldout_nll(S.hf_logits_fn(model), batches, vocab_size=400).chance == pytest.approx(5.991465, abs=1e-6)
    assert res.perplexity == pytest.approx(float(torch.exp(want)), rel=1e-5)


def test_chunk_tokens():
    rows = S.chunk_tokens(list(range(23)), seq_length=5, batch_size=3)
    assert [r.shape for r in rows] == [(3, 5), (1, 5)]
    assert rows[1].tolist() == [[15, 16, 17, 18, 19]]
    assert len(S.chunk_tokens(list(range(23)), 5, 3, max_chunks=2)[0]) == 2


def test_eval_cli_end_to_end(tiny, tmp_path, capsys):
    from grow_megatron.cli.eval import main

    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(P.REAL_WORDS))
    out = tmp_path / "r.json"
    assert (
        main(
            [
                str(tmp_path / "hf"),
                "--tasks",
                "copying_words,varassign_basic",
                "--n",
                "3",
                "--seed",
                "0",
                "--shots",
                "1",
                "--heldout",
                str(text),
                "--seq-length",
                "64",
                "--batch-size",
                "8",
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert set(res["primitives"]) == {"copying_words", "varassign_basic"}
    assert res["primitives"]["copying_words"]["n"] == 3
    assert res["primitives"]["varassign_basic"]["chance"] == pytest.approx(0.2)
    assert res["template_version"] == P.TEMPLATE_VERSION
    # Same numbers as the library on the same examples.
    ex = P.generate("varassign_basic", 3, 0, P.PrimitivesConfig(num_shots=1))
    lib = S.evaluate_mc(S.hf_scorer(model, tokenizer), ex)["varassign_basic"]
    assert res["primitives"]["varassign_basic"]["correct"] == lib.correct
    h = res["heldout"][str(text)]
    assert h["tokens"] % 64 == 0 and h["tokens"] > 0 and h["nll"] > 0
    assert "copying_words" in capsys.readouterr().out


def test_eval_cli_names_a_path_that_is_no_model(tmp_path, capsys):
    from grow_megatron.cli import main

    # Neither an HF directory (config.json) nor a native checkpoint / run dir: one line, exit 2.
    assert main(["eval", str(tmp_path), "--tasks", "varassign_basic", "--n", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "neither a checkpoint directory" in err[0]


def _fast_and_reference(model, tokenizer, examples, batch_size, max_length):
    fast = S.hf_scorer(model, tokenizer, batch_size=batch_size, max_length=max_length)
    ref = S.hf_scorer(model, tokenizer, batch_size=batch_size, max_length=max_length, reference=True)
    assert isinstance(fast, S.CachedPrefixScorer) and isinstance(ref, S.LogLikelihoodScorer)
    return fast.score(examples), ref.score(examples)


def test_cached_prefix_scorer_equals_reference(tiny):
    """The KV-cached scorer gives the reference's sums (fp32 rounding) and the same argmax, with
    ragged choice lengths (1 to 6 tokens) and several prompts per batch, and runs each prompt
    once: tokens through the model drop from prompts x choices x prompt length to about
    prompts x prompt length."""
    model, tokenizer = tiny
    one_shot = P.PrimitivesConfig(num_shots=1)
    examples = [P.make_example(t, 0, i, one_shot) for t in ("copying_words", "varassign_code") for i in range(2)]
    examples.append(MCExample("Fill in blank:\n\nx=1\nx=", (" 1", " 12 and then some", "9", " 7 7 7 7 7"), 1, "custom"))
    examples.append(MCExample(examples[0].prompt, examples[0].choices, examples[0].answer, "same_prompt"))
    rows = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kw: rows.append(
            (kw.get("cache", kw.get("past_key_values")) is not None, *kw["input_ids"].shape)
        ),
        with_kwargs=True,
    )
    try:
        fast = S.hf_scorer(model, tokenizer, batch_size=2).score(examples)
    finally:
        hook.remove()
    ref = S.hf_scorer(model, tokenizer, batch_size=2, reference=True).score(examples)
    assert [len(f) for f in fast] == [len(ex.choices) for ex in examples]
    assert torch.allclose(
        torch.tensor([x for f in fast for x in f]), torch.tensor([x for r in ref for x in r]), rtol=0, atol=2e-5
    )
    assert S.predictions(fast) == S.predictions(ref)
    # Prefix forwards (no cache yet): one row per distinct prompt, the repeated prompt included
    # once; continuation forwards: one row per prompt of the batch, all its choices in it.
    assert sum(b for cached, b, _ in rows if not cached) == len(examples) - 1
    assert all(b <= 2 for cached, b, _ in rows if cached)


def test_cached_prefix_scorer_at_the_context_limit(tiny):
    """Prompts that just fit, are one token too long, or much too long: both paths cut the same
    tokens from the left (choices of different lengths keep different prefixes)."""
    model, tokenizer = tiny
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    base = P.make_example("varassign_basic", 0, 0, P.PrimitivesConfig(num_shots=1))
    choices = (" 3", " 12 and 13", " 7 . -> x")
    longest = max(len(S.encode_pair(enc, base.prompt, c)[1]) for c in choices)
    fits = len(enc(base.prompt)) + longest - 1
    examples = [MCExample(base.prompt, choices, 0, "t")]
    for limit in (fits, fits - 1, fits - 20):
        reqs = S.mc_requests(examples, enc)
        assert S.truncated_prompts(examples, reqs, limit) == {"t": int(limit < fits)}
        fast, ref = _fast_and_reference(model, tokenizer, examples, batch_size=4, max_length=limit)
        assert fast[0] == pytest.approx(ref[0], abs=2e-5)
        assert S.predictions(fast) == S.predictions(ref)
    # The cut really changes the numbers (so the test above compares truncated scoring).
    assert (
        _fast_and_reference(model, tokenizer, examples, 4, fits - 20)[0]
        != _fast_and_reference(model, tokenizer, examples, 4, fits)[0]
    )


def test_near_chance_and_mean_stderr():
    # 0 of 5 right at chance 0.2 is indistinguishable from guessing; 60 of 100 is not.
    assert S.MCResult("t", 5, 0, 0.2).near_chance
    assert not S.MCResult("t", 100, 60, 0.2).near_chance
    a, b = S.MCResult("a", 100, 30, 0.1), S.MCResult("b", 400, 100, 0.2)
    m = S.mean_result({"a": a, "b": b})
    assert m["accuracy"] == pytest.approx((0.3 + 0.25) / 2)
    assert m["stderr"] == pytest.approx(((0.3 * 0.7 / 100) + (0.25 * 0.75 / 400)) ** 0.5 / 2)
    assert m["chance"] == pytest.approx(0.15) and m["n"] == 500


def test_eval_cli_warns_about_and_records_truncated_prompts(tiny, tmp_path, capsys):
    """A context shorter than the few-shot prompts: a warning with the numbers and the number
    of shots that fits, the cut prompts counted in the table and the JSON; with that number
    of shots nothing is cut. A held-out --seq-length beyond the context is refused."""
    import re

    from grow_megatron.cli import main

    model, tokenizer = tiny
    d = tmp_path / "hf"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "r.json"
    common = [str(d), "--tasks", "varassign_basic", "--n", "3", "--device", "cpu", "--json", str(out)]
    capsys.readouterr()
    assert main(["eval", *common, "--shots", "2"]) == 0
    cap = capsys.readouterr()
    warning = [ln for ln in cap.err.splitlines() if ln.startswith("WARNING")]
    assert len(warning) == 1 and "3 of 3 prompts are longer than the model's context of 64 tokens" in warning[0]
    assert "estimated" in cap.err  # the cost line
    res = json.loads(out.read_text())
    assert res["primitives"]["varassign_basic"]["truncated"] == 3 and res["truncated_prompts"] == 3
    assert res["context_length"] == 64
    shots = int(re.search(r"Fix: --shots (\d+)", warning[0]).group(1))
    assert shots < 2
    assert main(["eval", *common, "--shots", str(shots)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert json.loads(out.read_text())["truncated_prompts"] == 0
    text = tmp_path / "t.txt"
    text.write_text("x = 1\n" * 100)
    assert main(["eval", str(d), "--tasks", "none", "--heldout", str(text), "--seq-length", "65"]) == 2
    assert "exceeds the model's context of 64" in capsys.readouterr().err


def test_eval_quick_preset(tiny, tmp_path):
    from grow_megatron.cli.eval import QUICK_CHUNKS, QUICK_N, main

    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(P.REAL_WORDS * 4))
    out = tmp_path / "q.json"
    assert (
        main(
            [
                str(tmp_path / "hf"),
                "--quick",
                "--tasks",
                "varassign_basic",
                "--shots",
                "0",
                "--heldout",
                str(text),
                "--seq-length",
                "8",
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["quick"] and res["n"] == QUICK_N == res["primitives"]["varassign_basic"]["n"]
    assert res["heldout"][str(text)]["windows"] == QUICK_CHUNKS  # the text has more windows than that
    # An explicit --n wins over the preset.
    assert (
        main(
            [
                str(tmp_path / "hf"),
                "--quick",
                "--n",
                "3",
                "--tasks",
                "varassign_basic",
                "--shots",
                "0",
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["n"] == 3


def test_cached_prefix_scorer_batches_ragged_prompts_like_the_reference(tiny):
    """Prompts of many lengths share prefix forwards (right-padded), continuations of many
    prompts share tail forwards against the padded cache, and every choice keeps the
    reference's sum: ragged prompts and choices, prompts that fit, sit at or go over the
    context (cut from the left per choice, as the reference cuts), and batch sizes that
    split the prompts unevenly. fp32 sums of at most 6 log-probs of size <= ln(V) ~ 6: a
    different summation order and kernel (masked vs causal attention) move them by a few
    ulp, far below 2e-5."""
    model, tokenizer = tiny
    zero, one = P.PrimitivesConfig(num_shots=0), P.PrimitivesConfig(num_shots=1)
    examples = [
        P.make_example(t, 0, i, cfg)
        for t in ("copying_words", "varassign_code", "varassign_math")
        for i, cfg in ((0, zero), (1, one))
    ]
    examples.append(MCExample("x=1\nx=", (" 1", " 12 and then some", "9", " 7 7 7 7 7"), 1, "custom"))
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    reqs = S.mc_requests(examples, enc)
    lengths = sorted({len(ctx) for ctx, _ in reqs})
    assert len(lengths) >= 5  # really ragged
    limit = lengths[len(lengths) // 2]  # about half the prompts are cut, one sits at the limit
    for max_length in (None, limit):
        ref = S.hf_scorer(model, tokenizer, batch_size=8, max_length=max_length, reference=True).score(examples)
        flat_ref = torch.tensor([x for r in ref for x in r])
        for batch_size in (1, 3, 64):
            calls = []
            hook = model.register_forward_pre_hook(
                lambda mod, args, kw: calls.append(
                    (kw.get("cache", kw.get("past_key_values")) is not None, tuple(kw["input_ids"].shape))
                ),
                with_kwargs=True,
            )
            try:
                fast = S.hf_scorer(model, tokenizer, batch_size=batch_size, max_length=max_length).score(examples)
            finally:
                hook.remove()
            assert torch.allclose(torch.tensor([x for f in fast for x in f]), flat_ref, rtol=0, atol=2e-5)
            assert S.predictions(fast) == S.predictions(ref)
            # Prefix forwards (no cache yet): ceil(distinct prefixes / batch_size) whatever their lengths.
            prefixes = {S.split_request(c, x, max_length)[0] for c, x in reqs}
            n_prefix_calls = sum(1 for cached, _ in calls if not cached)
            assert n_prefix_calls == -(-len(prefixes) // batch_size)
            assert all(b <= batch_size for cached, (b, _) in calls if cached)  # one tail row per prompt
