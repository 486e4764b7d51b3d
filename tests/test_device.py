"""The device is decided once and passed down (engine/device.py): the process's Layout holds it,
resolve_run derives precision from it and hands it to the EngineSpec, and the engine built from
that spec computes there."""

import dataclasses

import torch

from engine_helpers import micro_overrides
from grow_megatron.config.run import load_run_config
from grow_megatron.engine.build import build_engine, destroy_engine
from grow_megatron.engine.device import Device
from grow_megatron.engine.distributed import device_context, init_distributed
from grow_megatron.engine.resolve import planned_layout, resolve_run


def _cfg(tmp_path):
    return load_run_config(
        None, micro_overrides(tmp_path / "run", **{"model.vocab_size": 4096, "model.kernels": "off"})
    )


def test_device_names_its_module_and_backend():
    assert Device("cpu").module is torch.cpu and Device("cpu").backend == "gloo" and not Device("cpu").is_gpu
    assert Device("cuda").module is torch.cuda and Device("cuda").backend == "nccl" and Device("cuda").is_gpu
    assert Device.local() == Device("cuda" if torch.cuda.is_available() else "cpu")


def test_the_layouts_device_reaches_the_engine_spec(tmp_path):
    cfg = _cfg(tmp_path)
    layout = planned_layout(cfg, 1)
    run = resolve_run(cfg, layout, random_tokens=True)
    assert run.spec.device == layout.device == Device.local()
    # A layout on another device (the benchmark resolves for the GPU it plans): precision follows.
    gpu = resolve_run(cfg, dataclasses.replace(layout, device=Device("cuda")), random_tokens=True)
    assert gpu.spec.device == Device("cuda") and gpu.bf16
    assert resolve_run(cfg, layout, random_tokens=True, device="cuda").spec.device == Device("cuda")


def test_init_distributed_records_the_device_of_its_process_group(tmp_path):
    with device_context():
        layout = init_distributed(1, 1, seed=0)
        assert layout.device == Device("cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        run = resolve_run(_cfg(tmp_path), layout, random_tokens=True)
        engine = build_engine(run.spec, 2)
        try:
            assert {p.device.type for p in engine.model[0].parameters()} == {layout.device.type}
        finally:
            destroy_engine(engine)
