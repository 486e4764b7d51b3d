"""Shared fixtures and the test tiers.

Tiers: the fast tier (`python -m pytest -q -m "not slow" tests`) holds the unit and
single-process tests, for the edit loop; the slow tier (`-m slow`) the multi-process,
torchrun, subprocess and end-to-end training tests. `python -m pytest -q tests` runs both. A
test is slow when it is marked `@pytest.mark.slow` or named in SLOW below (whole modules, or
one test of a module: the list keeps the tier of every test file visible in one place).
"""

import os

import torch

from grow_megatron.engine.device import Device  # noqa: E402

# Triton kernels run under the interpreter on machines without a GPU (CI), chosen before
# anything imports triton.
Device.local().interpret_triton_on_cpu()
# Two cores: keep torch from oversubscribing when tests spawn gloo ranks.
torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402

SLOW = (
    # several processes: gloo ranks, torchrun, forked or spawned workers, subprocess CLIs
    "test_async_save.py",
    "test_bench.py",
    "test_checkpoint_faults.py",
    "test_checkpoint_sharded.py::test_dp4_save_writes_only_each_ranks_range",
    "test_data_distributed.py",
    "test_distributed.py",
    "test_eval_lm_eval_real.py",
    "test_full_disk.py",
    "test_gpu_results.py::test_cli_renders_every_section",
    "test_growth_ownership.py",
    "test_import_names.py",
    "test_kernels_compile.py",
    "test_launchers.py",
    "test_looping_training.py",
    "test_peer_exit.py",
    "test_run_dir_lock.py",
    "test_scale.py",
    "test_staged_outputs.py",
    "test_study.py",
    # end to end: whole training runs, every figure of every analysis, the kernels in a model
    "test_analysis_fast.py::test_packed_interventions_equal_naive_recomputation",
    "test_analysis_fast.py::test_quick_preset_and_cost_line",
    "test_analysis_lens_cli.py",
    "test_analysis_plots.py",
    "test_cli_tools.py::test_growth_benchmark_writes_its_record",
    "test_compile.py",
    "test_convert_parity.py::test_plain_hf_model_imports_and_trains_on",
    "test_data_pipeline.py::test_default_config_builds_and_decodes_corpus",
    "test_engine_growth.py::test_growth_frees_the_old_model",
    "test_kernels_bench.py::test_dry_run_writes_well_formed_json",
    "test_model_kernels.py",
    "test_offline_growth.py",
    "test_run_history.py",
    "test_run_logging.py",
    "test_training_guards.py",
    "test_training_resume.py",
)
"""Tests in the slow tier: `module.py` (all its tests) or `module.py::test_function` (all its
parameter sets)."""


def _is_slow(item: pytest.Item) -> bool:
    module = item.path.name
    function = getattr(item, "originalname", item.name)
    return module in SLOW or f"{module}::{function}" in SLOW


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Prepared datasets and tokenizers go to a per-session directory, not the user's cache."""
    if "GROW_MEGATRON_CACHE" not in os.environ:
        os.environ["GROW_MEGATRON_CACHE"] = str(tmp_path_factory.mktemp("gm_cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def engine_env():
    """A single-process megatron world (TP = PP = DP = 1) inside the device context (the CPU
    compatibility layer without a GPU), for a module's tests that build engines in this process.
    The process group lives until the process ends (init_distributed is idempotent), the
    device context until the module's last test."""
    from grow_megatron.engine.distributed import device_context, init_distributed

    with device_context():
        init_distributed(1, 1, seed=0)
        yield
