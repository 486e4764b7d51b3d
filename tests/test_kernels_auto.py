"""model.kernels=auto: each kernel on only where it beat its reference (kernels/select.py), the
model built with exactly those, and the run's first note naming them with the times."""

import torch

import grow_megatron.kernels as kernels
import grow_megatron.kernels.select as select
from engine_helpers import micro_config
from grow_megatron.config.model import ModelConfig
from grow_megatron.engine.distributed import device_context, init_distributed
from grow_megatron.engine.resolve import planned_layout, resolve_run
from grow_megatron.model.builder import build_model_chunk, make_transformer_config
from grow_megatron.model.modules import FusedSwiGLU, ScaledRMSNorm, SDPAttention

TIMINGS = {"rmsnorm": (0.10, 0.25), "rope": (0.31, 0.30), "swiglu": (0.2, 0.2), "loss": (1.0, 3.0)}


def test_winners_are_the_strictly_faster_kernels():
    assert select.winners(TIMINGS) == ("rmsnorm", "loss")
    assert select.winners({}) == ()
    assert select.winners({"rope": (0.1, 0.2)}) == ("rope",)


def test_auto_on_a_gpu_builds_the_winners_and_says_so(tmp_path, monkeypatch):
    seen = {}

    def fake_time(shapes, dtype, device):
        seen.update(shapes=shapes, dtype=dtype, device=device)
        return TIMINGS

    monkeypatch.setattr(kernels, "triton_available", lambda device=None: True)
    monkeypatch.setattr(select, "time_kernels", fake_time)
    cfg = micro_config(tmp_path, **{"model.vocab_size": 4096})
    run = resolve_run(cfg, planned_layout(cfg, 1), random_tokens=True, device="cuda")
    assert run.use_kernels and run.spec.use_kernels and run.spec.kernels == ("rmsnorm", "loss")
    m = cfg.model
    assert seen["shapes"] == select.Shapes(
        tokens=cfg.train.micro_batch_size * m.seq_length,
        hidden=m.hidden_size,
        ffn=m.ffn_hidden_size,
        heads=m.num_attention_heads,
        kv_heads=m.kv_heads,
        head_dim=m.head_dim,
        vocab=4096,
        seq=m.seq_length,
    )
    assert seen["dtype"] == torch.bfloat16 and seen["device"] == "cuda"
    assert run.describe().startswith(
        "bf16, kernels rmsnorm, loss (auto; fwd+bwd ms, kernel vs reference: rmsnorm 0.1 vs 0.25, rope 0.31 vs 0.3"
    )
    # none wins: the reference path, and the note says so
    monkeypatch.setattr(select, "time_kernels", lambda *a: {"rope": (2.0, 1.0)})
    run = resolve_run(cfg, planned_layout(cfg, 1), random_tokens=True, device="cuda")
    assert not run.use_kernels and "kernels off (auto" in run.describe()


def test_model_runs_exactly_the_chosen_kernels():
    model = ModelConfig(
        num_layers=1,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=64,
        seq_length=8,
    )
    with device_context():
        init_distributed(1, 1, seed=0)
        for chosen in (("rmsnorm", "loss"), ("rope", "swiglu"), ()):
            cfg = make_transformer_config(model, num_layers=1, kernels=chosen)
            chunk = build_model_chunk(cfg, model, 64)
            mods = list(chunk.modules())
            assert all(n.use_kernel == ("rmsnorm" in chosen) for n in mods if isinstance(n, ScaledRMSNorm))
            assert all(a.use_kernel == ("rope" in chosen) for a in mods if isinstance(a, SDPAttention))
            assert any(isinstance(x, FusedSwiGLU) for x in mods) == ("swiglu" in chosen)
            assert chunk.fused_loss == ("loss" in chosen)
