"""The whole model with the Triton kernels on equals the reference path (loss and gradients).

CPU runs the kernels under TRITON_INTERPRET=1 in fp32, so the only differences are summation
orders inside the kernels (fp32, ~1e-7 relative per reduction): 1e-5 relative on the loss and
1e-4 relative on every gradient (norm-wise) leaves room for that and none for a wrong kernel.
"""

import pytest
import torch

from grow_megatron.config.model import ModelConfig
from grow_megatron.engine.build import build_engine, run_microbatches
from grow_megatron.engine.resolve import engine_spec

V, S = 257, 24


def _loss_and_grads(use_kernels, ln_scaling):
    model = ModelConfig(
        num_layers=2,
        hidden_size=48,
        ffn_hidden_size=80,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=V,
        seq_length=S,
        ln_scaling=ln_scaling,
    )
    spec = engine_spec(model, V, use_kernels=use_kernels, seed=11)
    torch.manual_seed(0)
    e = build_engine(spec, 2)
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, V, (2, S + 1), generator=g)
    mb = {
        "tokens": t[:, :-1],
        "labels": t[:, 1:],
        "loss_mask": torch.ones(2, S),
        "position_ids": torch.arange(S).expand(2, S),
    }
    loss = float(run_microbatches(e, [mb], forward_only=False))
    grads = {n: p.main_grad.clone() for n, p in e.named_parameters()}
    return e, loss, grads


@pytest.mark.parametrize("ln_scaling", [False, True])
def test_kernels_match_reference_path(engine_env, ln_scaling):
    ek, lk, gk = _loss_and_grads(True, ln_scaling)
    layer = ek.local_layers()[0]
    # The kernels are really in use.
    assert ek.model[0].module.fused_loss and layer.input_layernorm.use_kernel
    assert type(layer.mlp.activation_func).__name__ == "FusedSwiGLU"
    assert layer.self_attention.core_attention.use_kernel
    _, lr, gr = _loss_and_grads(False, ln_scaling)
    assert lk == pytest.approx(lr, rel=1e-5)
    assert gk.keys() == gr.keys()
    for n in gr:
        err = (gk[n] - gr[n]).norm() / gr[n].norm().clamp_min(1e-30)
        assert err < 1e-4, (n, float(err))


def test_checkpoint_state_is_the_same_with_kernels(engine_env):
    # megatron's MLP asks each child (the fused activation too) for its sharded state: the
    # kernels must neither break a save nor change what is saved.
    ek, _, _ = _loss_and_grads(True, False)
    er, _, _ = _loss_and_grads(False, False)
    keys_k = set(ek.chunks[0].sharded_state_dict())
    assert keys_k == set(er.chunks[0].sharded_state_dict()) and keys_k
