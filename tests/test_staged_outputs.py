"""`grow-megatron grow` and `convert to-hf` publish their output whole (issue 25, findings 4 and
6): a kill at each fault point (engine/faults.py) leaves no OUT at all, only a staging directory
named `OUT.incomplete-*`, which the next run into OUT names and removes; a half-written OUT can
never be read as complete (`train OUT/config.yaml` finds no config; transformers finds no model)."""

import json
import os

import pytest
import yaml

from engine_helpers import micro_config
from grow_megatron.cli import main as cli_main
from grow_megatron.engine.checkpoint import latest_checkpoint
from grow_megatron.engine.faults import ENV, InjectedFault
from grow_megatron.engine.staging import leftovers
from grow_megatron.training.loop import train


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A micro LIDAS run stopped at step 2 (depth 4), with metrics to carry."""
    cfg = micro_config(tmp_path_factory.mktemp("src"))
    train(cfg, stop_at=2)
    return cfg.run_dir


def _grow(src, out):
    return cli_main(["grow", src, "--operator", "lidas", "--block-size", "4", "--out", str(out)])


@pytest.mark.parametrize("point", ["grow.checkpoint", "grow.history", "grow.staged"])
def test_a_grow_killed_at_each_point_publishes_nothing_and_the_rerun_says_so(
    source_run, tmp_path, monkeypatch, capsys, point
):
    out = tmp_path / "grown"
    monkeypatch.setenv(ENV, f"{point}:raise")  # the disk state a kill at that point leaves
    with pytest.raises(InjectedFault):
        _grow(source_run, out)
    assert not out.exists()
    left = leftovers(str(out))
    assert len(left) == 1 and os.path.basename(left[0]).startswith("grown.incomplete-")
    capsys.readouterr()
    # The half output cannot be trained as if it were complete (today's code trained defaults).
    assert cli_main(["train", str(out / "config.yaml")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    monkeypatch.delenv(ENV)
    assert _grow(source_run, out) == 0
    err = capsys.readouterr().err
    assert "did not finish" in err and left[0] in err
    assert not leftovers(str(out)) and not os.path.exists(left[0])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["run_dir"] == str(out) and cfg["model"]["num_layers"] == 8
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    source = [json.loads(line) for line in open(os.path.join(source_run, "metrics.jsonl"))]
    assert metrics == source and len(metrics) == 2 and events[-1]["offline"] is True
    assert latest_checkpoint(str(out / "checkpoints")).endswith("step_00000002")


def test_grow_refuses_a_non_empty_out(source_run, tmp_path, capsys):
    out = tmp_path / "grown"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _grow(source_run, out) == 2
    assert "--out" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("point", ["export.weights", "export.staged"])
def test_a_killed_export_leaves_nothing_loadable_and_force_replaces_whole(source_run, tmp_path, monkeypatch, point):
    from grow_megatron.convert import to_hf

    out = tmp_path / "hf"
    monkeypatch.setenv(ENV, f"{point}:raise")
    with pytest.raises(InjectedFault):
        to_hf(source_run, str(out), progress=False)
    assert not out.exists()
    (left,) = leftovers(str(out))
    # Before the last step the staging directory has no config.json: nothing a loader takes for a model.
    assert os.path.exists(os.path.join(left, "config.json")) == (point == "export.staged")
    monkeypatch.delenv(ENV)
    first = to_hf(source_run, str(out), progress=False)
    assert first["removed_leftovers"] == [left] and not leftovers(str(out))
    before = sorted(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(before)
    # --force over a complete export, killed, then again: the old export stays whole until the
    # new one replaces it, and nothing of either run's temporary files is left in it.
    monkeypatch.setenv(ENV, f"{point}:raise")
    with pytest.raises(InjectedFault):
        to_hf(source_run, str(out), progress=False, force=True)
    assert sorted(os.listdir(out)) == before
    monkeypatch.delenv(ENV)
    to_hf(source_run, str(out), progress=False, force=True)
    assert sorted(os.listdir(out)) == before and not leftovers(str(out))
    assert not [f for f in os.listdir(tmp_path) if f != "hf"]

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 4
