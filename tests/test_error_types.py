"""Error types say what failed (issue #26): configuration, data, checkpoint, environment.

`except ConfigError` means "the configuration is wrong" only; every UserError is still one
line at the CLI (exit status 2)."""

import json
import os
import pickle

import pytest

from grow_megatron.cli import main as cli_main
from grow_megatron.config.base import CheckpointError, ConfigError, DataError, RunEnvironmentError, UserError
from grow_megatron.config.rundir import RunDir


@pytest.mark.parametrize("cls", [ConfigError, DataError, CheckpointError, RunEnvironmentError])
def test_each_kind_is_a_user_error_and_only_config_is_a_config_error(cls):
    err = cls("checkpoint", "/x/step_1", "cannot be read")
    assert isinstance(err, UserError) and str(err) == "checkpoint = '/x/step_1': cannot be read"
    assert isinstance(err, ConfigError) == (cls is ConfigError)
    # Rebuilt with its own type and parts (a rank-0 error broadcast to the others).
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and (back.path, back.value, back.allowed) == (err.path, err.value, err.allowed)


def test_a_corrupt_checkpoint_is_a_checkpoint_error_and_one_line_at_the_cli(tmp_path, capsys):
    from grow_megatron.convert.native import NativeReader

    run = RunDir(str(tmp_path / "run"))
    ck = os.path.join(run.checkpoints, "step_00000001")
    os.makedirs(ck)
    with open(run.config, "w") as f:
        f.write("model:\n  preset: tiny\n")
    with open(os.path.join(ck, "meta.json"), "w") as f:
        json.dump({"step": 1, "depth": "two", "split": [2]}, f)
    with pytest.raises(CheckpointError, match="meta.json: depth = 'two'"):
        NativeReader(ck)
    assert cli_main(["convert", "to-hf", ck, str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.json: depth = 'two'" in err[0], err


def test_unreadable_data_is_a_data_error_not_a_config_error(tmp_path):
    from grow_megatron.data.readers import list_source_files

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is an empty file") as err:
        list_source_files(str(empty), "data.paths[0]")
    assert not isinstance(err.value, ConfigError)
