"""FP8 linear layers: megatron's column/row-parallel linears whose matmul runs through
torchao's float8 training (dynamic scaling, `tensorwise` or `rowwise`).

Plugged in through the ModuleSpec (spec.py) when model.fp8 is set, so every engine build,
a growth's included, makes its linears FP8. The parameters stay the high-precision tensors
megatron's DDP and distributed optimizer own: only the matmul casts (inputs, weights and
gradients, scaled on the fly), so a checkpoint holds no FP8 state and resumes at any layout
or precision. Tensor parallelism stays unsupported (refused at config time): megatron's
TP linear fuses its dgrad all-reduce into the matmul we replace.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


def float8_configs(recipe: str, emulate: bool):
    """(Float8LinearConfig, LinearMMConfig) of torchao's recipe; torchao imported only when used."""
    from torchao.float8.config import Float8LinearConfig
    from torchao.float8.float8_training_tensor import LinearMMConfig, ScaledMMConfig

    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(recipe), emulate=emulate)
    # As torchao's Float8Linear builds it: one gemm config per matmul (output, grad_input, grad_weight).
    gemms = (config.gemm_config_output, config.gemm_config_grad_input, config.gemm_config_grad_weight)
    mm = LinearMMConfig(*(ScaledMMConfig(emulate, g.use_fast_accum, False, config.pad_inner_dim) for g in gemms))
    return config, mm


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, configs) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T with torchao's float8 training matmul (forward and
    backward); `configs` from float8_configs."""
    from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

    config, mm = configs
    return matmul_with_hp_or_float8_args.apply(x, weight.t(), mm, config)


def _fp8_forward_impl(
    module, input, weight, bias=None, *args, sequence_parallel=False, allreduce_dgrad=False, **kwargs
):
    if sequence_parallel or allreduce_dgrad:
        raise ValueError("FP8 linears run with tensor_parallel 1 only (no sequence parallelism)")
    out = fp8_linear(input, weight, module.fp8_configs)
    return out if bias is None else out + bias


def _init_fp8(module) -> None:
    module.fp8_configs = float8_configs(module.config.grow_fp8, module.config.grow_fp8_emulate)


class Fp8ColumnParallelLinear(ColumnParallelLinear):
    """ColumnParallelLinear (TP = 1) whose matmul is torchao's float8 one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _init_fp8(self)

    def _forward_impl(self, input, weight, *args, **kwargs):
        return _fp8_forward_impl(self, input, weight, *args, **kwargs)


class Fp8RowParallelLinear(RowParallelLinear):
    """RowParallelLinear (TP = 1) whose matmul is torchao's float8 one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _init_fp8(self)

    def _forward_impl(self, input, weight, *args, **kwargs):
        return _fp8_forward_impl(self, input, weight, *args, **kwargs)


def fp8_hardware() -> bool:
    """Whether this process's GPU runs FP8 matmuls (torch._scaled_mm: compute capability >= 8.9)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
