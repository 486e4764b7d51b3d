"""StudyConfig: one YAML file describes a whole grown-vs-static study (`grow-megatron study`).

A study is one base run config, a list of variants (each a few `--set` overrides of it, e.g.
`growth.operator=midas` or `model.ln_scaling=true`), the seeds every variant is trained with,
and what to evaluate and analyse afterwards. Everything is checked here, before any training
starts: the base config and every variant's resolved run config are validated exactly as
`grow-megatron train` would validate them, and a variant that changes the token budget is
refused (the study compares variants at equal tokens).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field

import yaml

from grow_megatron.config.base import ConfigError, check, check_output_dir, from_dict
from grow_megatron.config.loop import LoopSpec
from grow_megatron.config.run import RunConfig, _set_dotted, load_run_config, parse_override, read_yaml, resolve_paths

PHASES = ("train", "convert", "eval", "analyze", "loop", "report")
"""Every phase of a study, in the order they run. train/convert/eval/analyze run per variant and
seed, loop once per seed of the looped variant, report once."""
ANALYSES = ("tuned-lens", "depth-score", "effects", "interventions", "sublayer", "block-similarity")
"""The depth analyses of docs/method.md §7 (the names of `grow-megatron analyze`)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class VariantConfig:
    """One variant of the study: the base run config with a few overrides."""

    name: str = ""
    """Short name (table rows, legends, directory names): letters, digits, `_ . -`."""
    set: list[str] = field(default_factory=list)
    """`section.field=value` overrides of the base run config, as `grow-megatron train --set` takes
    them, e.g. [growth.operator=lidas] or [model.ln_scaling=true]."""
    config: str | None = None
    """A run config file of this variant's own, used instead of the study's `base` (relative to
    the study file), e.g. examples/smollm360m_lidas.yaml; base_set and `set` still apply."""


@dataclass
class EvalConfig:
    """The `eval` phase: reasoning primitives and held-out NLL (`grow-megatron eval`)."""

    tasks: str = "paper"
    """Reasoning primitives: `paper` (Table 6's five), `all`, or a comma list of task names."""
    n: int = 200
    """Examples per task."""
    seed: int = 0
    """Seed of the generated task examples (the same examples for every variant)."""
    max_chunks: int | None = None
    """At most this many held-out windows (empty: the whole held-out file)."""
    seq_length: int | None = None
    """Held-out NLL window (empty: the model's context)."""
    batch_size: int = 16
    """Prompts / windows per forward pass."""

    def validate(self, path: str) -> None:
        from grow_megatron.eval.primitives import parse_tasks

        try:
            parse_tasks(self.tasks)
        except (ConfigError, ValueError, KeyError) as err:
            raise ConfigError(f"{path}.tasks", self.tasks, f"not a task list ({err})") from None
        check(self.n >= 1, f"{path}.n", self.n, "must be >= 1")
        for name in ("max_chunks", "seq_length"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"{path}.{name}", v, "must be a positive integer (or empty)")
        check(self.batch_size >= 1, f"{path}.batch_size", self.batch_size, "must be >= 1")


@dataclass
class AnalysisConfig:
    """The `analyze` phase: the depth analyses of docs/method.md §7 (`grow-megatron analyze compare`)."""

    analyses: list[str] = field(default_factory=lambda: list(ANALYSES))
    """Which analyses: any of tuned-lens, depth-score, effects, interventions, sublayer, block-similarity."""
    tasks: str = "varassign_math"
    """Multiple-choice task of the interventions and the tuned lens' early-exit accuracy (the
    paper's Fig. 1C and 3 use Variable Assignment Math)."""
    n: int = 100
    """Examples of that task."""
    quick: bool = False
    """`analyze --quick`: cheaper settings (fewer lens steps, sequences, intervention sizes)."""
    set: list[str] = field(default_factory=list)
    """`ANALYSIS.FIELD=VALUE` settings passed to `analyze compare --set`, e.g. [tuned-lens.steps=100]."""

    def validate(self, path: str) -> None:
        check(bool(self.analyses), f"{path}.analyses", self.analyses, "name at least one analysis")
        for i, a in enumerate(self.analyses):
            check(a in ANALYSES, f"{path}.analyses[{i}]", a, f"must be one of {', '.join(ANALYSES)}")
        EvalConfig(tasks=self.tasks).validate(path)
        check(self.n >= 1, f"{path}.n", self.n, "must be >= 1")
        for i, item in enumerate(self.set):
            key, eq, _ = item.partition("=")
            name, dot, fld = key.partition(".")
            check(
                bool(eq and dot and fld) and name in ANALYSES,
                f"{path}.set[{i}]",
                item,
                f"must be ANALYSIS.FIELD=VALUE with ANALYSIS one of {', '.join(ANALYSES)}",
            )
            check(name in self.analyses, f"{path}.set[{i}]", item, f"sets {name}, which is not in {path}.analyses")


@dataclass
class LoopConfig:
    """The `loop` phase: inference-time looping of a grown variant (`grow-megatron loop-sweep`)."""

    of: str = "best"
    """The variant to loop: `best` (the grown variant with the highest mean primitive accuracy
    in the eval phase, ties broken by lower held-out NLL) or a variant's name."""
    blocks: str | None = None
    """Blocks to loop, `START:END,...` (empty: the blocks the growths copied, from the growth history)."""
    repeats: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Repeat counts (1 = the plain model, always scored as the baseline row)."""
    n: int | None = None
    """Examples per primitive task (empty: eval.n)."""

    def validate(self, path: str, variants: list[str]) -> None:
        check(
            self.of == "best" or self.of in variants,
            f"{path}.of",
            self.of,
            f"must be best or one of the variants ({', '.join(variants)})",
        )
        if self.blocks is not None:
            for item in self.blocks.split(","):
                LoopSpec.parse(f"{item.strip()}x1", field=f"{path}.blocks")
        check(
            bool(self.repeats) and all(r >= 1 for r in self.repeats),
            f"{path}.repeats",
            self.repeats,
            "must be a non-empty list of counts >= 1",
        )
        check(self.n is None or self.n >= 1, f"{path}.n", self.n, "must be >= 1 (or empty for eval.n)")


@dataclass
class StudyConfig:
    """A study: variants of one run config, trained at equal tokens, evaluated, analysed, reported."""

    name: str = "study"
    """Study name (the report's title)."""
    base: str | dict = ""
    """The base run config: a path to a run config YAML (relative to this file), or the run config
    itself, inline (its data paths relative to this file)."""
    base_set: list[str] = field(default_factory=list)
    """`--set` overrides applied to every variant (before the variant's own)."""
    variants: list[VariantConfig] = field(default_factory=list)
    """The variants, e.g. static, midas, lidas, lnscaling. The first one is the reference the
    report compares the others with."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds (train.seed); every variant is trained once per seed."""
    out_dir: str = "studies/study"
    """Where runs, exports, results, figures and report.md go (relative to the current directory)."""
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    """Which phases run: train, convert, eval, analyze, loop, report (each needs the ones before
    it, done now or by an earlier run of the study)."""
    heldout: str | None = None
    """Held-out text for NLL and the token-based analyses (.txt, or .jsonl with a `text` field;
    relative to this file). Empty with the embedded default corpus: its validation documents
    (never trained on) are written to OUT_DIR/heldout.jsonl; with other data it must be given."""
    launcher: str = ""
    """How `train` is started, e.g. `torchrun --nproc-per-node 8` when the run config's layout
    needs several ranks. Empty: one process. The other phases always run in one process."""
    device: str = "cpu"
    """Device of the eval, analyze and loop phases (cpu, cuda)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    loop: LoopConfig | None = None
    """Inference-time looping of a grown variant (empty: no loop phase)."""

    def validate(self) -> StudyConfig:
        check(bool(self.name.strip()), "name", self.name, "may not be empty")
        check(
            isinstance(self.base, dict) or bool(self.base.strip()),
            "base",
            self.base,
            "give a run config file path or the run config inline",
        )
        check(bool(self.variants), "variants", self.variants, "list at least one variant")
        names = []
        for i, v in enumerate(self.variants):
            check(
                bool(_NAME.fullmatch(v.name)),
                f"variants[{i}].name",
                v.name,
                "must be letters, digits, _ . - (it names directories)",
            )
            check(v.name not in names, f"variants[{i}].name", v.name, "is used by an earlier variant")
            names.append(v.name)
        check(bool(self.seeds), "seeds", self.seeds, "list at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, "has a seed twice")
        for i, s in enumerate(self.seeds):
            check(s >= 0, f"seeds[{i}]", s, "must be >= 0")
        check(bool(self.phases), "phases", self.phases, "name at least one phase")
        for i, p in enumerate(self.phases):
            check(p in PHASES, f"phases[{i}]", p, f"must be one of {', '.join(PHASES)}")
        check_output_dir(self.out_dir, "out_dir")
        if self.heldout is not None:
            check(os.path.isfile(self.heldout), "heldout", self.heldout, "no such file: give a .txt or .jsonl file")
        if self.launcher.strip():
            words = self.launcher_words()
            check(
                shutil.which(words[0]) is not None,
                "launcher",
                self.launcher,
                f"{words[0]} is not on PATH (empty launcher: one process)",
            )
        self.eval.validate("eval")
        self.analysis.validate("analysis")
        if self.loop is not None:
            self.loop.validate("loop", names)
        return self

    def launcher_words(self) -> list[str]:
        try:
            words = shlex.split(self.launcher)
        except ValueError as err:
            raise ConfigError("launcher", self.launcher, f"cannot be split into words ({err})") from None
        check(bool(words), "launcher", self.launcher, "is blank")
        return words

    def world_size(self) -> int:
        """Ranks the launcher starts (torchrun's --nproc-per-node x --nnodes; 1 without a launcher)."""
        if not self.launcher.strip():
            return 1
        words, per_node, nodes = self.launcher_words(), 1, 1
        for i, w in enumerate(words):
            key, eq, val = w.partition("=")
            if key.replace("_", "-") in ("--nproc-per-node", "--nnodes"):
                text = val if eq else (words[i + 1] if i + 1 < len(words) else "")
                try:
                    n = int(text.split(":")[-1])
                except ValueError:
                    raise ConfigError(
                        "launcher",
                        self.launcher,
                        f"{key} must be a number here (it sets the world size the variants are checked at)",
                    ) from None
                if key.replace("_", "-") == "--nnodes":
                    nodes = n
                else:
                    per_node = n
        return per_node * nodes

    # --- derived: the variants' run configs ------------------------------------------------
    def variant_overrides(self, variant: VariantConfig, seed: int, run_dir: str) -> list[str]:
        """Every --set of one (variant, seed) training run, in order."""
        return [
            *self.base_set,
            *variant.set,
            f"train.seed={seed}",
            f"run_dir={run_dir}",
            f"name={variant.name}-s{seed}",
        ]

    def run_config(self, base_path: str, variant: VariantConfig, seed: int, run_dir: str) -> RunConfig:
        """The validated run config of one (variant, seed), as `train` will see it."""
        try:
            return load_run_config(
                variant.config or base_path,
                self.variant_overrides(variant, seed, run_dir),
                world_size=self.world_size(),
            )
        except ConfigError as err:
            where = f"variants[{[v.name for v in self.variants].index(variant.name)}] ({variant.name})"
            raise ConfigError(f"{where}: {err.path}", err.value, err.allowed) from None


def _check_overrides(items: list[str], path: str) -> None:
    for i, item in enumerate(items):
        check(isinstance(item, str), f"{path}[{i}]", item, "must be a section.field=value string")
        key, _ = parse_override(item)
        check(
            key not in ("run_dir", "name", "train.seed"),
            f"{path}[{i}]",
            item,
            "the study sets run_dir, name and train.seed itself (seeds: lists the seeds)",
        )


def load_study(path: str, overrides: list[str] | None = None) -> tuple[StudyConfig, str]:
    """Read, override (`key.sub=value`, dotted study fields), map and validate a study file.

    Returns (config, base run config path): an inline `base` is written to OUT_DIR/base.yaml
    with its data paths made absolute from the study file's directory, so that every phase
    reads one file. Paths in the study file (base, heldout) are relative to that file."""
    raw = read_yaml(path, field="STUDY")
    here = os.path.dirname(os.path.abspath(path))
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    cfg = from_dict(StudyConfig, raw)
    if isinstance(cfg.base, str) and cfg.base.strip():
        cfg.base = os.path.abspath(os.path.join(here, os.path.expanduser(cfg.base)))
        check(
            os.path.isfile(cfg.base), "base", cfg.base, "file not found (a run config YAML, relative to the study file)"
        )
    if cfg.heldout:
        cfg.heldout = os.path.abspath(os.path.join(here, os.path.expanduser(cfg.heldout)))
    cfg.out_dir = os.path.abspath(os.path.expanduser(cfg.out_dir))
    cfg.validate()
    _check_overrides(cfg.base_set, "base_set")
    for i, v in enumerate(cfg.variants):
        _check_overrides(v.set, f"variants[{i}].set")
        if v.config is not None:
            v.config = os.path.abspath(os.path.join(here, os.path.expanduser(v.config)))
            check(
                os.path.isfile(v.config),
                f"variants[{i}].config",
                v.config,
                "file not found (a run config YAML, relative to the study file)",
            )
    if isinstance(cfg.base, str):
        _check_variants(cfg, cfg.base)
        return cfg, cfg.base
    # Inline: checked from a scratch copy, so that a bad variant writes nothing under out_dir.
    text = yaml.safe_dump(resolve_paths(dict(cfg.base), here, run_dir=False), sort_keys=False)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = os.path.join(scratch, "base.yaml")
        with open(tmp, "w") as f:
            f.write(text)
        _check_variants(cfg, tmp)
    os.makedirs(cfg.out_dir, exist_ok=True)
    out = os.path.join(cfg.out_dir, "base.yaml")
    with open(out, "w") as f:
        f.write(text)
    return cfg, out


def _check_variants(cfg: StudyConfig, base_path: str) -> None:
    """Every (variant, seed) validates as a run config; all train the same tokens; with the
    embedded corpus a held-out file can be derived, with other data it must be given."""
    budgets = {}
    for v in cfg.variants:
        rc = cfg.run_config(base_path, v, cfg.seeds[0], os.path.join(cfg.out_dir, "check"))
        budgets[v.name] = (rc.train.steps, rc.train.global_batch_size, rc.model.seq_length)
        if cfg.heldout is None:
            check(
                rc.data.is_default(),
                "heldout",
                None,
                f"variant {v.name} trains on its own data.datasets: give a held-out text file (not trained on)",
            )
    first = cfg.variants[0].name
    for i, v in enumerate(cfg.variants):
        if budgets[v.name] != budgets[first]:
            steps, gbs, seq = budgets[v.name]
            raise ConfigError(
                f"variants[{i}].set",
                v.set,
                f"trains {steps} steps x {gbs} sequences x {seq} tokens, {first} "
                f"{budgets[first][0]} x {budgets[first][1]} x {budgets[first][2]}: the study compares "
                "variants at equal tokens (set train.steps / batch / seq_length in base_set)",
            )
