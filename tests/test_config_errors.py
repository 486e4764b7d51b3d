"""Bad configuration stops before any work with one line naming the field, value and fix."""

import pytest

from grow_megatron.cli import main as cli_main
from grow_megatron.config.base import ConfigError
from grow_megatron.config.run import load_run_config
from grow_megatron.growth.schedule import plan_from_config


@pytest.mark.parametrize(
    "overrides,field,fragment",
    [
        (
            ["model.num_layers=10", "growth.operator=midas", "growth.block_size=4"],
            "growth.block_size",
            "must divide model.num_layers (10)",
        ),
        (["growth.operator=sideways"], "growth.operator", "must be one of 'none', 'midas', 'lidas'"),
        (
            ["model.hidden_size=130", "model.num_attention_heads=4"],
            "model.num_attention_heads",
            "must divide hidden_size (130)",
        ),
        (["model.num_query_groups=3"], "model.num_query_groups", "must divide num_attention_heads (4)"),
        (["data.datasets=[{path: /nonexistent/corpus}]", "data.datasets[0]"], "--set", "section.field=value"),
        (["model.preset=smollm-9b"], "model.preset", "must be one of smollm-360m, smollm-1.7b, tiny"),
        (
            ["train.global_batch_size=10", "train.micro_batch_size=4"],
            "train.global_batch_size",
            "must be a multiple of micro_batch_size",
        ),
        (["optim.lr=-1"], "optim.lr", "must be > 0"),
        (["train.global_batch_size=0"], "train.global_batch_size", "must be positive"),
        (
            ["train.eval_interval=10", "train.eval_batches=0"],
            "train.eval_batches",
            "must be positive while evaluation is on (or set train.eval_interval=0)",
        ),
        (["train.stepz=5"], "train.stepz", "unknown field of TrainConfig (did you mean steps?)"),
        (["parallel.tensor_parallel=3"], "parallel.tensor_parallel", "must divide the world size (1)"),
        (["train.seed=-1"], "train.seed", "must be in 0..2**32-1"),
        (["train.seed=4294967296"], "train.seed", "must be in 0..2**32-1"),
        (["train.max_skipped_steps=0"], "train.max_skipped_steps", "must be >= 1"),
        # Used to hang for ever computing 3^(10^300) exactly.
        (["growth.operator=lidas", "growth.alpha=1e300"], "growth.alpha", "must be in [0, 10]"),
        (["growth.operator=lidas", "growth.alpha=-1"], "growth.alpha", "must be in [0, 10]"),
    ],
)
def test_each_bad_value_is_named(overrides, field, fragment):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["model.preset=tiny", *overrides])
    assert err.value.path == field
    assert fragment in str(err.value)


def test_a_plan_with_an_empty_stage_is_named_before_any_work(tmp_path):
    # Two stages over 160 growth steps: stage 1 gets 160 / (1 + 2^10) < 1 step. The config is
    # well-formed field by field; the plan (growth.schedule) is what cannot be run.
    cfg = load_run_config(
        None, ["model.preset=tiny", "growth.operator=lidas", "growth.alpha=10", f"run_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(ConfigError) as err:
        plan_from_config(cfg)
    assert err.value.path == "growth.alpha"
    assert (
        "gives stage 1 of 2 no steps (PROP-10 over 160 growth steps: [0, 160]): lower growth.alpha, or raise "
        "growth.grow_steps (with train.steps) to 1025, which gives every stage a step"
    ) in str(err.value)
    from grow_megatron.training.loop import train

    with pytest.raises(ConfigError):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run_dir was made


@pytest.mark.parametrize(
    "overrides,world,field,fragment",
    [
        (
            ["growth.operator=lidas", "growth.block_size=4", "model.num_layers=8", "parallel.pipeline_parallel=8"],
            8,
            "parallel.pipeline_parallel",
            "every one of the 8 pipeline stages needs at least one layer",
        ),
        (
            ["parallel.tensor_parallel=2", "parallel.pipeline_parallel=2"],
            6,
            "parallel.tensor_parallel",
            "must divide the world size (6)",
        ),
        (["parallel.tensor_parallel=8"], 8, "parallel.tensor_parallel", "must divide the attention heads (4)"),
        (["parallel.virtual_stages=2"], 1, "parallel.virtual_stages", "needs pipeline_parallel > 1"),
        (
            [
                "growth.operator=lidas",
                "growth.block_size=4",
                "model.num_layers=8",
                "parallel.pipeline_parallel=2",
                "parallel.virtual_stages=4",
            ],
            2,
            "parallel.virtual_stages",
            "every one of the 8 virtual stages (2 ranks x 4) needs at least one layer, but the model starts with "
            "growth.block_size=4 layers",
        ),
        (
            [
                "parallel.pipeline_parallel=2",
                "parallel.virtual_stages=2",
                "train.global_batch_size=6",
                "train.micro_batch_size=2",
            ],
            2,
            "train.global_batch_size",
            "gives 3 micro-batch(es) per pipeline pass (/ micro_batch_size 2 / data-parallel size 1); the interleaved "
            "schedule (parallel.virtual_stages=2) needs a multiple of pipeline_parallel (2)",
        ),
        (
            [
                "parallel.pipeline_parallel=2",
                "parallel.virtual_stages=2",
                "train.global_batch_size=4",
                "train.micro_batch_size=2",
                "train.eval_interval=5",
                "train.eval_batches=3",
            ],
            2,
            "train.eval_batches",
            "gives 3 micro-batch(es) per pipeline pass (evaluation)",
        ),
        (
            ["parallel.pipeline_parallel=2", "parallel.virtual_stages=2", "parallel.pipeline_split=[3, 3]"],
            2,
            "parallel.pipeline_split",
            "must list 4 positive layer counts summing to model.num_layers (8)",
        ),
    ],
)
def test_layout_errors(overrides, world, field, fragment):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["model.preset=tiny", *overrides], world_size=world)
    assert err.value.path == field
    assert fragment in str(err.value)


def test_missing_data_path_is_named(tmp_path):
    from grow_megatron.data import build_tokenizer
    from grow_megatron.data.datasets import resolve_datasets

    cfg = load_run_config(None, ["model.preset=tiny", f"data.datasets=[{{path: {tmp_path}/missing.jsonl}}]"])
    with pytest.raises(ConfigError) as err:
        resolve_datasets(cfg.data, build_tokenizer(cfg.data), progress=False)
    assert "data.datasets[0].path" in str(err.value) and "missing.jsonl" in str(err.value)


def test_cli_prints_one_line_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\n  num_layers: 10\ngrowth:\n  operator: lidas\n  block_size: 4\n")
    assert cli_main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "grow-megatron train: growth.block_size = 4: must divide model.num_layers (10) so that growth "
        "ends at the final depth"
    ]


def test_missing_config_file(capsys):
    assert cli_main(["train", "/no/such/run.yaml"]) == 2
    assert "config = '/no/such/run.yaml': file not found" in capsys.readouterr().err


def test_kernels_on_without_gpu_or_interpreter_is_named(tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels can run")
    from engine_helpers import micro_config
    from grow_megatron.kernels import _utils
    from grow_megatron.training.loop import train

    monkeypatch.setattr(_utils, "interpreting", lambda: False)
    with pytest.raises(ConfigError, match="model.kernels = 'on': the Triton kernels need a CUDA GPU"):
        train(micro_config(tmp_path, **{"model.kernels": "on"}))


def test_yaml_on_off_reach_on_off_fields(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("model:\n  preset: tiny\n  kernels: off\n")  # YAML 1.1 reads `off` as false
    assert load_run_config(str(run)).model.kernels == "off"
    assert load_run_config(None, ["model.kernels=on"]).model.kernels == "on"
