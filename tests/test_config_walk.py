"""The run's config is resolved once (issue 26, docs/architecture.md "The walk from train").

Following the `RunConfig` from `training.loop.train` (tools/call_walk.py --config: only the
calls that pass the config, or an object holding it, as an argument) must stay in training,
config, growth's planning and engine's resolution; everything below receives the resolved
`EngineSpec`, paths and numbers. A planted call that hands the config to the engine's builder
fails the check."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = "grow_megatron.training.loop.train"
ALLOWED = ("grow_megatron.training.", "grow_megatron.config.", "grow_megatron.growth.schedule.")
"""Where the whole config may be read, besides the resolution modules below."""
RESOLUTION = ("grow_megatron.engine.resolve.", "grow_megatron.engine.memory.")
"""engine/'s resolution: the one place below training that reads the RunConfig (resolve_run
and the memory estimate it checks)."""


@pytest.fixture(scope="module")
def call_walk():
    spec = importlib.util.spec_from_file_location("call_walk", ROOT / "tools" / "call_walk.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["call_walk"] = mod  # dataclasses resolves the module's annotations through it
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["call_walk"]


def _outside(call_walk, root: Path) -> list[str]:
    order = call_walk.config_walk(call_walk.Tree(root), START)
    return [f for f in order if not f.startswith(ALLOWED + RESOLUTION)]


def test_the_config_walk_reaches_the_engine_only_through_resolution(call_walk):
    tree = call_walk.Tree(ROOT)
    leaves: set[str] = set()
    order = call_walk.config_walk(tree, START, leaves)
    count = call_walk.count(tree, order, leaves)
    assert _outside(call_walk, ROOT) == []
    # The walk reaches the resolution, then continues in training: it is followed, not cut short.
    assert "grow_megatron.engine.resolve.resolve_run" in order
    assert "grow_megatron.training.loop._step" in order
    # Every climb is a return from a lookup (a function that passes the config on to nothing).
    assert count.inner == []


def test_a_planted_hand_off_of_the_config_to_the_builder_fails(call_walk, tmp_path):
    shutil.copytree(ROOT / "grow_megatron", tmp_path / "grow_megatron", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    loop = tmp_path / "grow_megatron" / "training" / "loop.py"
    text = loop.read_text()
    anchor = "    data = _Data.build(run)\n"
    assert text.count(anchor) == 1
    loop.write_text(text.replace(anchor, anchor + "    build_engine(cfg, 1)\n"))
    assert _outside(call_walk, tmp_path) == ["grow_megatron.engine.build.build_engine"]
