"""Reasoning primitives (docs/method.md §8): determinism, well-formed choices, unique correct answers,
oracle and chance-level scorers."""

from __future__ import annotations

import hashlib
import math
import random
import re

import pytest

from grow_megatron.config.base import ConfigError
from grow_megatron.eval import primitives as P
from grow_megatron.eval.scoring import evaluate_mc
from grow_megatron.eval.tasks import MCExample

TASKS = list(P.TASKS)


def _blocks(prompt: str) -> list[str]:
    return prompt.split(P.TEMPLATES["common"]["shot_sep"] + "Fill in")


def _solve(task: str, block: str) -> tuple[str, list[str]]:
    """Independent re-derivation of the answer of one instance from its text alone:
    (answer, the options the text allows). The block may end with ' -> answer' (a shot)."""
    body = block.split("____ . ->")[0].rstrip(" ")
    if task.startswith("copying"):
        words = body.split("\n")[-1].split(" ")
        n = len(words)
        seq, run = words[: P.PrimitivesConfig().copy_length], words[P.PrimitivesConfig().copy_length :]
        assert len(seq) + len(run) == n
        hits = [i for i in range(len(seq) - len(run)) if seq[i : i + len(run)] == run]
        assert len(hits) == 1, "the repeated run must occur exactly once in the sequence"
        return seq[hits[0] + len(run)], seq
    lines = [ln for ln in body.split("\n") if ln and not ln.endswith(":")]
    facts, query = lines[:-1], lines[-1]
    pat = {
        "varassign_basic": r"^(\w)=(\d+)$",
        "varassign_code": r"^(\w) = (\d+)$",
        "varassign_math": r"^Let (\w) be (\d+)\.$",
    }[task]
    values = dict(re.match(pat, f).groups() for f in facts)
    assert len(values) == len(facts), "variable names must be distinct"
    name = {
        "varassign_basic": r"^(\w)=$",
        "varassign_code": r"^print\((\w)\)  # prints$",
        "varassign_math": r"^What is (\w)\?$",
    }[task]
    q = re.match(name, query).group(1)
    return values[q], list(values.values())


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_per_seed(task):
    a = P.generate(task, 20, seed=0)
    assert a == P.generate(task, 20, seed=0)
    b = P.generate(task, 20, seed=1)
    assert sum(x != y for x, y in zip(a, b)) == 20
    # Example i does not depend on n.
    assert P.generate(task, 5, seed=0) == a[:5]


@pytest.mark.parametrize("task", TASKS)
def test_well_formed_and_unique_answer(task):
    cfg = P.PrimitivesConfig()
    k = P.num_choices(task)
    assert k == (10 if task.startswith("copying") else 5)
    assert P.chance(task) == pytest.approx(0.1 if task.startswith("copying") else 0.2)
    for ex in P.generate(task, 200, seed=3):
        assert isinstance(ex, MCExample) and ex.task == task
        assert len(ex.choices) == k and len(set(ex.choices)) == k
        assert 0 <= ex.answer < k
        assert all(c.startswith(" ") and c.strip() == c[1:] for c in ex.choices)
        assert ex.prompt.endswith("____ . ->")
        blocks = _blocks(ex.prompt)
        assert len(blocks) == cfg.num_shots + 1
        for shot in blocks[:-1]:
            want, _ = _solve(task, shot)
            assert shot.endswith(f"____ . -> {want}")
        want, options = _solve(task, blocks[-1])
        # Exactly one choice is right, and the choices are exactly the options in the text.
        assert [c.strip() == want for c in ex.choices].count(True) == 1
        assert ex.choices[ex.answer].strip() == want
        assert sorted(c.strip() for c in ex.choices) == sorted(options)


def test_paper_example_shape():
    ex = P.make_example("copying_random", 0, 7)
    last = _blocks(ex.prompt)[-1]
    assert last.startswith(" the blank:\n")  # "Fill in the blank:\n" minus the split marker
    words = last.split("\n")[1].split(" ____")[0].split(" ")
    assert len(words) == 15 and all(len(w) == 3 and w.isalpha() for w in words)
    va = P.make_example("varassign_basic", 0, 0)
    assert va.prompt.startswith("Fill in blank:\n\n") and va.prompt.endswith("=____ . ->")


def test_real_words_and_letters():
    assert len(set(P.REAL_WORDS)) == len(P.REAL_WORDS) >= 300
    assert all(w.isalpha() and w.islower() for w in P.REAL_WORDS)
    for ex in P.generate("copying_words", 20, 0):
        assert all(c.strip() in P.REAL_WORDS for c in ex.choices)
    for ex in P.generate("copying_letters", 20, 0):
        assert all(len(c.strip()) == 1 for c in ex.choices)


# Golden fingerprints of example 0 (seed 0) per task. A template or sampling change breaks
# these on purpose: bump TEMPLATE_VERSION, then update the hashes.
GOLDEN_V1 = {
    "copying_letters": "716f9a92b516b57e",
    "copying_random": "28410c186f55cc12",
    "copying_words": "93110ce2c59cd812",
    "varassign_basic": "6fe35bde457d967b",
    "varassign_code": "cfa3cbcdb47b0b94",
    "varassign_math": "92e268e2fa635ad6",
}


def test_templates_versioned():
    assert P.TEMPLATE_VERSION == "1"
    for task, h in GOLDEN_V1.items():
        assert hashlib.sha256(repr(P.make_example(task, 0, 0)).encode()).hexdigest()[:16] == h, task


class OracleScorer:
    """Knows the answers: 0 for the correct choice, -1 for the others (a scorer's upper bound)."""

    def score(self, examples):
        return [[0.0 if j == ex.answer else -1.0 for j in range(len(ex.choices))] for ex in examples]


class RandomScorer:
    """Uniformly random scores from its own seeded RNG (ties have probability 0): accuracy =
    chance in expectation."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, examples):
        rng = random.Random(self.seed)
        return [[rng.random() for _ in ex.choices] for ex in examples]


def test_oracle_scorer_is_perfect():
    examples = [ex for t in TASKS for ex in P.generate(t, 50, 1)]
    res = evaluate_mc(OracleScorer(), examples)
    assert set(res) == set(TASKS)
    assert all(r.accuracy == 1.0 and r.n == 50 for r in res.values())


class FirstChoice:
    """Always picks choice 0: at chance only if the answer position is uniform."""

    def score(self, examples):
        return [[1.0] + [0.0] * (len(ex.choices) - 1) for ex in examples]


@pytest.mark.parametrize("task", ["copying_random", "varassign_math"])
def test_uninformed_scorers_at_chance(task):
    # n = 2000, tolerance 4 binomial sigmas: 4*sqrt(.1*.9/2000) = 2.7 points for copying,
    # 4*sqrt(.2*.8/2000) = 3.6 points for variable assignment; false alarm ~6e-5 per check.
    n = 2000
    examples = P.generate(task, n, seed=11)
    p = P.chance(task)
    for scorer in (RandomScorer(seed=0), FirstChoice()):
        res = evaluate_mc(scorer, examples)[task]
        assert res.chance == pytest.approx(p)
        assert abs(res.accuracy - p) <= 4 * math.sqrt(p * (1 - p) / n), type(scorer).__name__


def test_errors():
    with pytest.raises(ConfigError, match="eval.tasks"):
        P.generate("copying_nonsense", 1)
    with pytest.raises(ConfigError, match="copy_query"):
        P.make_example("copying_random", 0, 0, P.PrimitivesConfig(copy_query=10))
    with pytest.raises(ConfigError, match="max_value"):
        P.make_example("varassign_basic", 0, 0, P.PrimitivesConfig(num_vars=5, max_value=2))
    assert P.parse_tasks("paper") == list(P.PAPER_TASKS)
    assert P.parse_tasks("all") == TASKS
    assert P.parse_tasks("copying_words, varassign_math") == ["copying_words", "varassign_math"]


def test_config_sizes():
    cfg = P.PrimitivesConfig(num_shots=2, copy_length=6, copy_query=3, num_vars=3)
    ex = P.make_example("copying_words", 0, 0, cfg)
    assert len(ex.choices) == 6 and ex.prompt.count("Fill in the blank:") == 3
    ex = P.make_example("varassign_code", 0, 0, cfg)
    assert len(ex.choices) == 3 and ex.prompt.count("print(") == 3
