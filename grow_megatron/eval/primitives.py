"""Reasoning primitives (docs/method.md §8; paper Appendix C, after Saunshi et al. 2024): seeded 5-shot
multiple-choice generators for copying and variable assignment.

Every template string lives in `TEMPLATES` below and is versioned by `TEMPLATE_VERSION`:
change a template, bump the version. Example `i` of (task, seed) is generated from its own
RNG seeded by (TEMPLATE_VERSION, task, seed, i), so it does not depend on n, on the other
tasks or on the process (str seeds go through SHA-512, not Python's salted hash).

Copying: `copy_length` distinct words, then a contiguous run of `copy_query` of them
repeated; the answer is the word that followed the run in the original. The choices are the
sequence's own words (10, chance 10%): every distractor appears in the context.
Variable assignment: `num_vars` statements with distinct names and values, one name
queried; the choices are the assigned values (5, chance 20%).
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from grow_megatron.config.base import ConfigError, check
from grow_megatron.eval.tasks import MCExample

TEMPLATE_VERSION = "1"
"""Bump on any change to TEMPLATES, the word list or the sampling, so results stay comparable."""

TEMPLATES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        # The paper's header for copying ("the blank") and for variable assignment ("blank") differ;
        # both kept verbatim from its Appendix C examples.
        "copying": MappingProxyType(
            {
                "header": "Fill in the blank:\n",
                "sequence_sep": " ",
                "query": "{context} ____ . ->",
            }
        ),
        "varassign_basic": MappingProxyType(
            {
                "header": "Fill in blank:\n\n",
                "fact": "{name}={value}",
                "query": "{name}=____ . ->",
            }
        ),
        "varassign_code": MappingProxyType(
            {
                "header": "Fill in blank:\n\n",
                "fact": "{name} = {value}",
                "query": "print({name})  # prints ____ . ->",
            }
        ),
        "varassign_math": MappingProxyType(
            {
                "header": "Fill in blank:\n\n",
                "fact": "Let {name} be {value}.",
                "query": "What is {name}? ____ . ->",
            }
        ),
        "common": MappingProxyType(
            {
                "answer": " {answer}",  # choices carry their separator (MCExample convention)
                "shot_sep": "\n\n",
                "line_sep": "\n",
            }
        ),
    }
)

TASKS: Mapping[str, str] = MappingProxyType(
    {
        "copying_letters": "copying, random single letters",
        "copying_random": "copying, random 3-letter words (paper: 'Copying (random words)')",
        "copying_words": "copying, real English words (paper: 'Copying (real words)')",
        "varassign_basic": "variable assignment, `o=23` lines",
        "varassign_code": "variable assignment as program statements, queried with print()",
        "varassign_math": "variable assignment in words, 'Let o be 23.'",
    }
)
"""Task name -> what it is."""

PAPER_TASKS = ("copying_random", "copying_words", "varassign_basic", "varassign_code", "varassign_math")
"""The five columns of the paper's Table 6, in its order."""

# Short, common, lowercase English words (no repeats); a list of several hundred keeps the
# chance that a real-word sequence repeats a word across shots low.
REAL_WORDS: tuple[str, ...] = tuple(
    """
act age air arm art bag ball band bank bar base bath bear bed bell belt bird boat body bone
book boot bowl box boy bread brick bridge brush bus cake call camp can cap car card care cart
case cat chair chalk cheese chest child city class clock cloud coat coin cold corn cost cotton
cow crowd cup curve dance day deer desk dinner dish dog door dress drink drop drum duck dust
ear earth egg end engine eye face fact farm father feast field finger fire fish flag flame
floor flower fog food foot fork fox frog fruit game garden gate girl glass glove goat gold
grain grass group guide gun hair hall hand harbor hat head heart hill hole home honey hook
horn horse hour house ice idea ink iron island jam jar jelly jewel juice key kettle king
kite knee knife lake lamp land leaf leg lemon letter light line lip list lock loaf map mark
market meal meat milk mind money month moon morning mother mouth music nail name neck needle
nest net night nose note number nut ocean office oil orange oven owl page pail paint pan
paper park party pea pen pencil person pet piano picture pig pin pipe place plane plant plate
pocket point pot potato queen rabbit rain rat ring river road rock roof room root rope rose
salt sand school sea seed shape sheep shelf ship shirt shoe shop side silk silver sister size
sky sleep smile snake snow soap sock soup spoon spring star stem step stick stone store storm
story street sugar summer sun table tail tea team tent test thread throat thumb ticket tiger
time toe tooth town toy train tree truck tub turkey twig uncle vase voice wall watch water
wave wax week wheel whip wind window wing winter wire wolf wood wool word worm yard year zoo
""".split()
)


@dataclass(frozen=True)
class PrimitivesConfig:
    """Sizes of the generated tasks (docs/method.md §8 defaults: 5 shots, 10 copy choices, 5 variables)."""

    num_shots: int = 5
    """Solved examples before the query."""
    copy_length: int = 10
    """Distinct words in a copying sequence; also its number of choices."""
    copy_query: int = 5
    """Length of the repeated run; it must be followed by a word, so < copy_length."""
    num_vars: int = 5
    """Statements per variable-assignment example; also its number of choices."""
    min_value: int = 0
    """Smallest assigned value."""
    max_value: int = 29
    """Largest assigned value (inclusive)."""

    def validate(self) -> PrimitivesConfig:
        check(self.num_shots >= 0, "num_shots", self.num_shots, "must be >= 0")
        check(
            2 <= self.copy_length <= 26,
            "copy_length",
            self.copy_length,
            "must be in 2..26 (sequences use distinct letters in the letters variant)",
        )
        check(
            1 <= self.copy_query < self.copy_length,
            "copy_query",
            self.copy_query,
            f"must be in 1..{self.copy_length - 1} (the run needs a following word)",
        )
        check(2 <= self.num_vars <= 26, "num_vars", self.num_vars, "must be in 2..26 (one letter per variable)")
        check(
            self.max_value - self.min_value + 1 >= self.num_vars,
            "max_value",
            self.max_value,
            f"need at least num_vars={self.num_vars} distinct values from min_value={self.min_value}",
        )
        return self


@dataclass(frozen=True)
class _Solved:
    """One instance: its query text, its options and the correct one."""

    query: str
    options: tuple[str, ...]
    answer: str


def _random_words(rng: random.Random, n: int, variant: str) -> list[str]:
    if variant == "letters":
        return rng.sample(string.ascii_lowercase, n)
    if variant == "words":
        return rng.sample(REAL_WORDS, n)
    out: list[str] = []
    while len(out) < n:  # distinct, so the next word after the run is unambiguous
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(3))
        if w not in out:
            out.append(w)
    return out


def _copying(rng: random.Random, variant: str, cfg: PrimitivesConfig) -> _Solved:
    t = TEMPLATES["copying"]
    seq = _random_words(rng, cfg.copy_length, variant)
    start = rng.randrange(cfg.copy_length - cfg.copy_query)
    run = seq[start : start + cfg.copy_query]
    context = t["sequence_sep"].join(seq + run)
    return _Solved(t["header"] + t["query"].format(context=context), tuple(seq), seq[start + cfg.copy_query])


def _varassign(rng: random.Random, variant: str, cfg: PrimitivesConfig) -> _Solved:
    t, c = TEMPLATES[f"varassign_{variant}"], TEMPLATES["common"]
    names = rng.sample(string.ascii_lowercase, cfg.num_vars)
    values = [str(v) for v in rng.sample(range(cfg.min_value, cfg.max_value + 1), cfg.num_vars)]
    q = rng.randrange(cfg.num_vars)
    lines = [t["fact"].format(name=n, value=v) for n, v in zip(names, values)]
    lines.append(t["query"].format(name=names[q]))
    return _Solved(t["header"] + c["line_sep"].join(lines), tuple(values), values[q])


def _solved(task: str, rng: random.Random, cfg: PrimitivesConfig) -> _Solved:
    kind, _, variant = task.partition("_")
    return _copying(rng, variant, cfg) if kind == "copying" else _varassign(rng, variant, cfg)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError("eval.tasks", task, f"must be one of {', '.join(TASKS)}")


def make_example(task: str, seed: int, index: int, config: PrimitivesConfig | None = None) -> MCExample:
    """Example `index` of `task` under `seed`: num_shots solved instances, then the query."""
    _check_task(task)
    cfg = (config or PrimitivesConfig()).validate()
    c = TEMPLATES["common"]
    rng = random.Random(f"grow_megatron.primitives/v{TEMPLATE_VERSION}/{task}/{seed}/{index}")
    shots = [_solved(task, rng, cfg) for _ in range(cfg.num_shots)]
    query = _solved(task, rng, cfg)
    parts = [s.query + c["answer"].format(answer=s.answer) for s in shots] + [query.query]
    options = list(query.options)
    rng.shuffle(options)
    choices = tuple(c["answer"].format(answer=o) for o in options)
    return MCExample(prompt=c["shot_sep"].join(parts), choices=choices, answer=options.index(query.answer), task=task)


def generate(task: str, n: int, seed: int = 0, config: PrimitivesConfig | None = None) -> list[MCExample]:
    """The first n examples of `task` under `seed` (a prefix of any larger n)."""
    if n < 0:
        raise ConfigError("eval.n", n, "must be >= 0")
    return [make_example(task, seed, i, config) for i in range(n)]


def num_choices(task: str, config: PrimitivesConfig | None = None) -> int:
    _check_task(task)
    cfg = config or PrimitivesConfig()
    return cfg.copy_length if task.startswith("copying") else cfg.num_vars


def chance(task: str, config: PrimitivesConfig | None = None) -> float:
    """Accuracy of uniform guessing: 0.1 for copying, 0.2 for variable assignment (defaults)."""
    return 1.0 / num_choices(task, config)


def parse_tasks(spec: str) -> list[str]:
    """'all' | 'paper' | comma-separated task names -> task list."""
    if spec == "all":
        return list(TASKS)
    if spec == "paper":
        return list(PAPER_TASKS)
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    for t in tasks:
        _check_task(t)
    return tasks
