"""resolve_run: a config and a layout in, the run's plan, precision, kernels, vocabulary and engine
spec out, the same for training and the benchmark; every refusal is one line."""

import pytest
import torch

from engine_helpers import micro_config, micro_overrides
from grow_megatron.bench.config import BenchConfig
from grow_megatron.bench.runner import resolve as bench_resolve
from grow_megatron.config.base import ConfigError
from grow_megatron.config.run import dump_run_config, load_run_config
from grow_megatron.engine.build import ScaleOptions
from grow_megatron.engine.distributed import Layout
from grow_megatron.engine.resolve import engine_spec, planned_layout, resolve_run
from grow_megatron.growth.schedule import plan_from_config
from grow_megatron.training.loop import train


def _cfg(tmp_path, world=1, **extra):
    return load_run_config(None, micro_overrides(tmp_path / "run", **extra), world_size=world)


def test_cpu_defaults_fp32_reference_path_and_the_tokenizers_vocab(tmp_path):
    cfg = _cfg(tmp_path)
    run = resolve_run(cfg, planned_layout(cfg, 1), device="cpu")
    assert cfg.train.precision == "auto" and cfg.model.kernels == "auto"
    assert not run.bf16 and not run.use_kernels
    # The embedded default tokenizer has 4096 tokens; TP=1 needs no padding.
    assert run.tokenizer is not None and run.tokenizer.vocab_size == 4096 and run.vocab == 4096
    assert run.describe() == ("fp32, kernels off, vocab 4096, overlap off, sequence parallel off, recompute none")
    assert run.spec.scale == ScaleOptions()  # every `auto` of the scale options is off on CPU
    assert run.plan == plan_from_config(cfg)
    assert run.plan.boundaries == (2, 5)  # PROP-1 over 9 growth steps, 3 stages: [2, 3, 4]
    s = run.spec
    assert (s.model, s.optim, s.vocab_size, s.bf16, s.use_kernels, s.tp, s.pp, s.vpp, s.final_split, s.seed) == (
        cfg.model,
        cfg.optim,
        4096,
        False,
        False,
        1,
        1,
        1,
        None,
        cfg.train.seed,
    )


def test_auto_precision_follows_the_device(tmp_path):
    cfg = _cfg(tmp_path, **{"model.vocab_size": 4096, "model.kernels": "off"})
    on_gpu = resolve_run(cfg, planned_layout(cfg, 1), random_tokens=True, device="cuda")
    assert on_gpu.bf16 and on_gpu.spec.bf16 and not on_gpu.use_kernels
    forced = _cfg(tmp_path, **{"model.vocab_size": 4096, "train.precision": "bf16"})
    assert resolve_run(forced, planned_layout(forced, 1), random_tokens=True, device="cpu").bf16


def test_kernels_on_need_triton_on_the_device(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, **{"model.kernels": "on"})
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors without the interpreter: no Triton
    with pytest.raises(ConfigError) as err:
        resolve_run(cfg, planned_layout(cfg, 1), device="cpu")
    assert err.value.path == "model.kernels" and "\n" not in str(err.value)
    assert "the Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1" in str(err.value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # under the interpreter they run
    assert resolve_run(cfg, planned_layout(cfg, 1), device="cpu").use_kernels


def test_vocab_padded_for_tensor_parallel(tmp_path):
    # 1001 rows do not split over 2 ranks: rounded up to a multiple of 128 x 2 = 256, 4 x 256.
    cfg = _cfg(tmp_path, world=2, **{"model.vocab_size": 1001, "parallel.tensor_parallel": 2})
    layout = Layout(world=2, rank=0, tp=2, pp=1, dp=1)
    assert planned_layout(cfg, 2) == layout
    run = resolve_run(cfg, layout, random_tokens=True, device="cpu")
    assert run.vocab == run.spec.vocab_size == 1024 and run.spec.tp == 2
    # A vocabulary TP divides stays as it is.
    even = _cfg(tmp_path, world=2, **{"model.vocab_size": 1000, "parallel.tensor_parallel": 2})
    assert resolve_run(even, layout, random_tokens=True, device="cpu").vocab == 1000


def test_vocab_refusals_are_one_line(tmp_path):
    small = _cfg(tmp_path, **{"model.vocab_size": 1000})
    with pytest.raises(ConfigError) as err:
        resolve_run(small, planned_layout(small, 1), device="cpu")
    assert err.value.path == "model.vocab_size" and "\n" not in str(err.value)
    assert "is smaller than the tokenizer's vocabulary (4096" in str(err.value)
    unset = _cfg(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_run(unset, planned_layout(unset, 1), random_tokens=True, device="cpu")
    assert err.value.path == "model.vocab_size" and "no tokenizer" in str(err.value)


def test_an_unrunnable_plan_is_refused_as_plan_from_config_refuses_it(tmp_path):
    cfg = load_run_config(
        None, ["model.preset=tiny", "growth.operator=lidas", "growth.alpha=10", f"run_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(ConfigError) as expected:
        plan_from_config(cfg)
    with pytest.raises(ConfigError) as err:
        resolve_run(cfg, planned_layout(cfg, 1), device="cpu")
    assert str(err.value) == str(expected.value)


def test_engine_spec_defaults_are_a_single_process_fp32_reference_engine(tmp_path):
    cfg = _cfg(tmp_path)
    s = engine_spec(cfg.model, 512)
    assert (s.vocab_size, s.bf16, s.use_kernels, s.tp, s.pp, s.vpp, s.final_split, s.seed) == (
        512,
        False,
        False,
        1,
        1,
        1,
        None,
        0,
    )


def test_the_benchmark_builds_the_engine_training_builds(tmp_path):
    # The spec training really built (read from its engine), against the benchmark's for the same
    # config file (its seed is the config's: the benchmark otherwise seeds with --seed).
    cfg = micro_config(
        tmp_path / "run",
        **{
            "model.vocab_size": 4096,
            "train.steps": 3,
            "growth.operator": "none",
            "growth.grow_steps": "null",
            "optim.decay_steps": 1,
            "model.num_layers": 4,
        },
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_run_config(cfg))
    specs = []
    train(cfg, stop_at=1, on_step=lambda engine, step, rec: specs.append(engine.spec))
    _, setup = bench_resolve(BenchConfig(config=str(path), seed=cfg.train.seed), on_gpu=torch.cuda.is_available())
    assert specs and setup.spec == specs[0]
    assert setup.spec == resolve_run(cfg, planned_layout(cfg, 1)).spec
