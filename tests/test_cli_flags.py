"""cli/flags.py: a command's flags from its options dataclass, and back; every command's --help."""

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from grow_megatron.cli import SUBCOMMANDS
from grow_megatron.cli import main as cli_main
from grow_megatron.cli.flags import add_flags, cli, given, options_from_args
from grow_megatron.config.base import ConfigError
from grow_megatron.config.options import check_positive, comma_list, flag_name


@dataclass
class Example:
    """A made-up command's options."""

    source: str = field(metadata=cli(positional=True))
    """the input file"""
    out: str
    """where the output goes"""
    steps: int = 10
    """how many steps"""
    lr: float = 1e-3
    """learning rate"""
    name: str | None = None
    """a name (default: the input's)"""
    limit: int | None = None
    """at most this many"""
    mode: Literal["fast", "exact"] = "exact"
    """how to run"""
    verbose: bool = False
    """say more"""
    progress: bool = True
    """show a progress bar"""
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    """window sizes"""
    overrides: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True, metavar="K=V"))
    """an override (repeatable)"""
    parts: tuple[str, ...] = field(default=("a", "b"), metadata=cli(nargs=None, type=comma_list))
    """a comma list of parts"""
    model: str | None = field(default=None, metadata=cli(positional=True))
    """an optional second positional"""
    block: int = field(default=4, metadata=cli(group="shape", metavar="B"))
    """block size"""

    def validate(self) -> None:
        check_positive(self, "steps", "limit")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="example")
    add_flags(p, Example)
    return p


def _action(p: argparse.ArgumentParser, dest: str) -> argparse.Action:
    (a,) = [a for a in p._actions if a.dest == dest]
    return a


def test_flags_follow_the_annotations_and_docstrings():
    p = _parser()
    src = _action(p, "source")
    assert src.option_strings == [] and src.nargs is None and src.help == "the input file"
    out = _action(p, "out")
    assert out.option_strings == ["--out"] and out.required and out.help == "where the output goes"
    steps = _action(p, "steps")
    assert (steps.option_strings, steps.type, steps.default) == (["--steps"], int, 10)
    assert steps.help == "how many steps (default: 10)"
    assert (_action(p, "lr").type, _action(p, "lr").default) == (float, 1e-3)
    name = _action(p, "name")
    assert (name.type, name.default, name.help) == (str, None, "a name (default: the input's)")
    assert (_action(p, "limit").type, _action(p, "limit").help) == (int, "at most this many")
    mode = _action(p, "mode")
    assert (mode.choices, mode.default, mode.type) == (("fast", "exact"), "exact", str)
    verbose = _action(p, "verbose")
    assert verbose.option_strings == ["--verbose"] and isinstance(verbose, argparse._StoreTrueAction)
    progress = _action(p, "progress")
    assert progress.option_strings == ["--progress", "--no-progress"] and progress.default is True
    sizes = _action(p, "sizes")
    assert (sizes.option_strings, sizes.nargs, sizes.type, sizes.default) == (["--sizes"], "+", int, [1, 2])
    sets = _action(p, "overrides")
    assert sets.option_strings == ["--set"] and isinstance(sets, argparse._AppendAction) and sets.metavar == "K=V"
    parts = _action(p, "parts")
    assert parts.nargs is None and parts.type is comma_list and parts.default == ("a", "b")
    model = _action(p, "model")
    assert model.option_strings == [] and model.nargs == "?"
    block = _action(p, "block")
    assert block.metavar == "B" and any(g.title == "shape" and block in g._group_actions for g in p._action_groups)


def test_parsed_flags_come_back_as_the_dataclass():
    opts = options_from_args(
        Example,
        _parser().parse_args(
            [
                "in.txt",
                "m",
                "--out",
                "o",
                "--steps",
                "3",
                "--mode",
                "fast",
                "--verbose",
                "--no-progress",
                "--sizes",
                "4",
                "8",
                "--set",
                "a=1",
                "--set",
                "b=2",
                "--parts",
                "x, y",
                "--limit",
                "7",
            ]
        ),
    )
    assert opts == Example(
        source="in.txt",
        out="o",
        steps=3,
        mode="fast",
        verbose=True,
        progress=False,
        sizes=[4, 8],
        overrides=["a=1", "b=2"],
        parts=("x", "y"),
        limit=7,
        model="m",
    )
    defaults = options_from_args(Example, _parser().parse_args(["in.txt", "--out", "o"]))
    assert defaults == Example(source="in.txt", out="o")
    # A repeated flag's list is fresh on each parse, not the field's default object.
    assert defaults.overrides == [] and defaults.overrides is not Example.__dataclass_fields__["overrides"].default


def test_bad_values_are_one_line_errors_naming_the_flag():
    p = _parser()
    with pytest.raises(ConfigError) as err:
        options_from_args(Example, p.parse_args(["in", "--out", "o", "--lr", "nan"]))
    assert str(err.value) == "--lr = nan: must be a finite number"
    with pytest.raises(ConfigError) as err:
        options_from_args(Example, p.parse_args(["in", "--out", "o", "--steps", "0"]))
    assert str(err.value) == "--steps = 0: must be a positive integer"
    with pytest.raises(ConfigError) as err:
        options_from_args(Example, {"source": "in", "out": "o", "sizes": [1, "x"]})
    assert str(err.value) == "--sizes[1] = 'x': must be an integer"
    with pytest.raises(SystemExit):  # a choice argparse already knows is wrong: its usage error, exit 2
        p.parse_args(["in", "--out", "o", "--mode", "slow"])


def test_only_given_flags_lay_over_presets_with_config_paths():
    @dataclass
    class Preset:
        steps: int = 250
        """optimizer steps"""
        local: bool = True
        """also local effects"""
        parts: list[str] = field(default_factory=lambda: ["layer", "attn"])
        """which parts"""

        def validate(self, path: str) -> None:
            if self.steps < 0:
                raise ConfigError(f"{path}.steps", self.steps, "must be >= 0")

    p = argparse.ArgumentParser()
    add_flags(p, Preset, only_given=True)
    assert _action(p, "steps").default is None and _action(p, "steps").help == "optimizer steps (default: 250)"
    assert _action(p, "local").option_strings == ["--local", "--no-local"] and _action(p, "parts").nargs == "*"
    args = p.parse_args(["--no-local", "--parts"])
    assert given(Preset, args) == {"local": False, "parts": []}
    cfg = options_from_args(Preset, {"steps": 50} | given(Preset, args), path="lens")
    assert cfg == Preset(steps=50, local=False, parts=[])
    with pytest.raises(ConfigError, match=r"^lens\.steps = -1: must be >= 0$"):
        options_from_args(Preset, given(Preset, p.parse_args(["--steps", "-1"])), path="lens")


def _commands() -> dict[tuple[str, ...], list[type]]:
    """argv prefix -> the options dataclasses whose fields its --help must list."""
    from grow_megatron.analysis.suite import CONFIGS
    from grow_megatron.bench.config import BenchConfig
    from grow_megatron.bench.growth import GrowthBenchOptions
    from grow_megatron.cli import (
        analyze,
        compare_runs,
        convert,
        data,
        eval,
        flops,
        grow,
        loop_sweep,
        plan,
        study,
        train,
    )

    out: dict[tuple[str, ...], list[type]] = {
        ("train",): [train.TrainOptions],
        ("plan",): [plan.PlanOptions],
        ("grow",): [grow.GrowOptions],
        ("flops",): [flops.FlopsOptions],
        ("bench",): [BenchConfig],
        ("bench-growth",): [GrowthBenchOptions],
        ("compare-runs",): [compare_runs.CompareRunsOptions],
        ("loop-sweep",): [loop_sweep.LoopSweepOptions],
        ("eval",): [eval.EvalOptions],
        ("study",): [study.StudyOptions],
    }
    out.update({("convert", verb): [cls] for verb, cls in convert.VERBS.items()})
    out.update({("data", verb): [cls] for verb, cls in data.VERBS.items()})
    out.update(
        {
            ("analyze", name): [analyze.options_class(name)] + ([CONFIGS[name]] if name in CONFIGS else [])
            for name in analyze.DESCRIPTIONS
        }
    )
    return out


def test_every_command_is_covered():
    assert {argv[0] for argv in _commands()} == set(SUBCOMMANDS)


@pytest.mark.parametrize("argv", list(_commands()), ids=" ".join)
def test_help_lists_every_option(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for cls in _commands()[argv]:
        for f in dataclasses.fields(cls):
            shown = (
                f.name
                if f.metadata.get("cli", {}).get("positional") and "metavar" not in f.metadata["cli"]
                else flag_name(f)
            )
            # As a whole word: "--n" must not pass on the strength of "--no-progress".
            assert re.search(rf"(?<![\w-]){re.escape(shown)}(?![\w-])", text), (
                f"{' '.join(argv)} --help does not list {shown}"
            )


def test_a_bad_flag_value_is_one_line_from_the_command(tmp_path, capsys):
    assert cli_main(["compare-runs", str(tmp_path), "--budgets", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "grow-megatron compare-runs: --budgets = 0: must be a positive integer\n"


def test_eval_help_names_every_primitive(capsys):
    from grow_megatron.eval.primitives import TASKS

    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(t in text for t in TASKS), "EvalOptions.tasks' docstring lists the primitives: keep it in step"
