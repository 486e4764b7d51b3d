"""A user's bad input, across the subcommands: one line naming the value and the fix, exit code 2.

Each case is cheap: the error must come before any model is built or any data is tokenized."""

import json
import types

import pytest

from grow_megatron.cli import main as cli_main

EXAMPLE = "examples/tiny_lidas.yaml"


def _one_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    import os

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("train.steps=[1", ["--set = 'train.steps=[1'", "not valid YAML"]),
        ("=5", ["--set", "the key must be a dotted field name"]),
        ("trian.steps=10", ["trian", "did you mean train?"]),
        ("optim.lr=inf", ["optim.lr = inf", "must be a finite number"]),
        ("optim.lr=.nan", ["optim.lr = nan", "must be a finite number"]),
        ("parallel.tensor_parallel=0", ["parallel.tensor_parallel = 0", "must be positive"]),
        ("model=[1, 2]", ["model = [1, 2]", "must be a mapping of ModelConfig fields"]),
    ],
)
def test_bad_set_overrides(override, fragments):
    from grow_megatron.config.base import ConfigError
    from grow_megatron.config.run import load_run_config

    with pytest.raises(ConfigError) as err:
        load_run_config(EXAMPLE, [override])
    for f in fragments:
        assert f in str(err.value)


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("model:\n\tpreset: tiny\n", ["is not valid YAML", "line 2"]),
        ("- a\n- b\n", ["must hold a mapping of sections"]),
        ("trian:\n  steps: 5\n", ["trian", "did you mean train?"]),
        ("model:\n  preset: tiny\n  kernel: on\n", ["model.kernel", "did you mean kernels?"]),
    ],
)
def test_bad_yaml_files_via_flops(tmp_path, capsys, text, fragments):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert cli_main(["flops", str(cfg)]) == 2
    _one_line(capsys, *fragments)


def test_empty_section_means_defaults(tmp_path):
    from grow_megatron.config.run import load_run_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  preset: tiny\ntrain:\n")
    assert load_run_config(str(cfg)).train.steps == 200
    assert load_run_config(str(cfg), ["train.steps=70"]).train.steps == 70


def test_config_is_a_directory_or_binary(tmp_path, capsys):
    assert cli_main(["flops", str(tmp_path)]) == 2
    _one_line(capsys, "is a directory")
    binary = tmp_path / "x.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    assert cli_main(["flops", str(binary)]) == 2
    _one_line(capsys, "is not a UTF-8 text file")


def test_plan_bad_config_is_one_line(capsys, tmp_path):
    assert cli_main(["plan", "/no/such/run.yaml"]) == 2
    _one_line(capsys, "config = '/no/such/run.yaml'", "file not found")
    assert cli_main(["plan", "examples/tiny_lidas.yaml", "--set", "parallel.tensor_parallel=abc"]) == 2
    _one_line(capsys, "parallel.tensor_parallel = 'abc'", "must be a positive integer")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert cli_main(["plan", str(tmp_path / "list.yaml")]) == 2
    _one_line(capsys, "must hold a mapping of sections")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (
            ["--preset", "smollm-360m", "--steps", "0", "--block-size", "4", "--tokens-per-step", "1000"],
            ["--steps = 0", "positive integer"],
        ),
        (["--preset", "smollm-360m", "--steps", "100", "--tokens-per-step", "0"], ["--tokens-per-step = 0"]),
        (
            [
                "--preset",
                "smollm-360m",
                "--steps",
                "100",
                "--alpha",
                "-1",
                "--block-size",
                "4",
                "--tokens-per-step",
                "10",
            ],
            ["--alpha = -1.0", "must be >= 0"],
        ),
        (
            [
                "--preset",
                "smollm-360m",
                "--steps",
                "10",
                "--grow-steps",
                "20",
                "--block-size",
                "4",
                "--tokens-per-step",
                "10",
            ],
            ["--grow-steps = 20", "must be <= the total steps (10)"],
        ),
        (
            [
                "--layers",
                "-8",
                "--hidden",
                "64",
                "--ffn",
                "256",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--vocab",
                "100",
                "--seq",
                "16",
                "--steps",
                "10",
                "--tokens-per-step",
                "10",
            ],
            ["--layers = -8"],
        ),
    ],
)
def test_flops_bad_flags(capsys, args, fragments):
    assert cli_main(["flops", *args]) == 2
    _one_line(capsys, *fragments)


def test_data_prepare_bad_out(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"text": "hello"}) + "\n")
    assert cli_main(["data", "prepare", str(src)]) == 2
    _one_line(capsys, "--out = None", "give the output prefix")
    assert cli_main(["data", "prepare", str(src), "--out", str(tmp_path)]) == 2
    _one_line(capsys, "is a directory: give a file prefix inside it")
    assert cli_main(["data", "prepare", str(src), "--out", str(src / "x")]) == 2
    _one_line(capsys, "--out", "cannot create directory")


def test_data_train_tokenizer_bad_args(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"text": "hello"}) + "\n")
    base = ["data", "train-tokenizer", str(src), "--out", str(tmp_path / "tok")]
    assert cli_main(base + ["--vocab-size", "10"]) == 2
    _one_line(capsys, "--vocab-size = 10", "at least 300")
    assert cli_main(base + ["--vocab-size", "300", "--sample-chars", "0"]) == 2
    _one_line(capsys, "--sample-chars = 0")
    assert cli_main(["data", "train-tokenizer", str(src), "--out", str(src), "--vocab-size", "300"]) == 2
    _one_line(capsys, "--out", "is a file")


def test_data_prepare_config_checks_every_section(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dat:\n  datasets: []\n")  # a typo would otherwise prepare the default corpus
    assert cli_main(["data", "prepare", "--config", str(cfg)]) == 2
    _one_line(capsys, "dat = ", "did you mean data?")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["/no/such/model"], ["MODEL = '/no/such/model'", "no such directory"]),
        (["{tmp}", "--heldout", "{tmp}/missing.txt"], ["--heldout", "no such file"]),
        (["{tmp}", "--batch-size", "0"], ["--batch-size = 0"]),
        (["{tmp}", "--json", "{tmp}/f.txt/out.json"], ["--json", "is an existing file"]),
        (["--export-lm-eval", "{tmp}/f.txt"], ["--export-lm-eval", "is an existing file"]),
    ],
)
def test_eval_bad_args_before_loading(tmp_path, capsys, args, fragments):
    (tmp_path / "f.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli_main(["eval", *args]) == 2
    _one_line(capsys, *fragments)


def test_eval_heldout_jsonl_without_text(tmp_path, capsys):
    from grow_megatron.config.base import ConfigError
    from grow_megatron.eval.evaluate import read_heldout_ids

    bad = tmp_path / "h.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(ConfigError, match="line 1 is not a JSON object with a 'text' field"):
        read_heldout_ids(str(bad), tokenizer=types.SimpleNamespace(eos_token_id=0))


def test_convert_bad_out_dir_and_seq_length(tmp_path, capsys):
    f = tmp_path / "f.txt"
    f.write_text("x")
    assert cli_main(["convert", "to-hf", str(tmp_path), str(f)]) == 2
    _one_line(capsys, "OUT_DIR", "is an existing file")
    assert cli_main(["convert", "from-hf", str(tmp_path), str(tmp_path / "r"), "--seq-length", "-1"]) == 2
    _one_line(capsys, "--seq-length = -1")


def test_convert_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    from grow_megatron.config.base import CheckpointError
    from grow_megatron.convert.native import NativeReader

    ck = tmp_path / "step_00000001"
    ck.mkdir()
    (ck / "meta.json").write_text("{bad")
    with pytest.raises(CheckpointError, match="cannot be read, its files are truncated or corrupted"):
        NativeReader(str(ck))


def test_compare_runs_bad_input(tmp_path, capsys):
    assert cli_main(["compare-runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "has no metrics.jsonl", "give a run directory")
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 8.3}) + "\n")
    assert cli_main(["compare-runs", str(old), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "without cumulative tokens/FLOPs")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "override,fragments",
    [
        # Each used to try allocating terabytes (or run into an index error mid-training).
        (
            "train.steps=1000000000000",
            [
                "train.steps = 1000000000000: the run needs about",
                "TiB of host memory",
                "data index 233 TiB; a rough estimate), but",
                "is available: lower train.steps",
            ],
        ),
        (
            "model.hidden_size=1048576",
            [
                "model.hidden_size = 1048576: the run needs about",
                "(model state ",
                " TiB, activations ",
                "is available: use a smaller model",
            ],
        ),
        (
            "model.seq_length=1000000000",
            [
                "model.seq_length = 1000000000: the run needs about",
                "activations ",
                " PiB, data index 40 KiB; a rough estimate), but ",
                "is available: lower model.seq_length",
            ],
        ),
        (
            "model.vocab_size=100",
            ["model.vocab_size = 100: is smaller than the tokenizer's vocabulary (4096, <embedded>)", "set it >= 4096"],
        ),
    ],
)
def test_train_refuses_impossible_sizes_before_any_work(tmp_path, capsys, override, fragments):
    run_dir = tmp_path / "run"
    assert cli_main(["train", EXAMPLE, "--run-dir", str(run_dir), "--set", override]) == 2
    _one_line(capsys, *fragments)
    assert not run_dir.exists()  # refused by resolve_run before the run_dir is made (or locked)


def test_train_run_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    assert cli_main(["train", EXAMPLE, "--run-dir", str(target)]) == 2
    _one_line(capsys, f"run_dir = {str(target)!r}: is an existing file, not a directory")
    assert target.read_text() == "mine\n"
