"""Small configs shared by the engine tests (one place to keep them fast)."""

from __future__ import annotations

from grow_megatron.config.run import load_run_config


def micro_overrides(run_dir, **extra) -> list[str]:
    """A 4 -> 8 -> 12 layer LIDAS run of width 64 on the embedded corpus: a few seconds on CPU."""
    base = {
        "run_dir": str(run_dir),
        "model.preset": "tiny",
        "model.num_layers": 12,
        "model.hidden_size": 64,
        "model.ffn_hidden_size": 160,
        "model.num_attention_heads": 4,
        "model.num_query_groups": 2,
        "model.seq_length": 32,
        "growth.operator": "lidas",
        "growth.block_size": 4,
        "growth.grow_steps": 9,
        "train.steps": 12,
        "train.global_batch_size": 4,
        "train.micro_batch_size": 2,
        "train.eval_interval": 0,
        "optim.lr": 3e-3,
        "optim.warmup_steps": 2,
        "optim.decay_steps": 3,
        "logging.progress": False,
        "logging.tensorboard": False,
        "checkpoint.save_at_growth": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def micro_config(run_dir, **extra):
    return load_run_config(None, micro_overrides(run_dir, **extra))


def assert_same_tensors(a: dict, b: dict) -> None:
    """Two {name: tensor} dicts hold the same names and the same values, bit for bit."""
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def narrow_model(num_layers: int, vocab_size: int, seq_length: int, **changes):
    """The engine tests' model: width 32, ffn 64, 4 query heads in 2 KV groups (GQA), so that a
    step takes milliseconds; `changes` sets other ModelConfig fields (ln_scaling, kernels)."""
    from grow_megatron.config.model import ModelConfig

    return ModelConfig(
        num_layers=num_layers,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=vocab_size,
        seq_length=seq_length,
        **changes,
    )


def random_batch(seed: int, vocab: int, seq: int, b: int = 2) -> dict:
    """One micro-batch of random tokens in the engine's format (tokens, labels, mask, positions)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (b, seq + 1), generator=g)
    return {
        "tokens": t[:, :-1],
        "labels": t[:, 1:],
        "loss_mask": torch.ones(b, seq),
        "position_ids": torch.arange(seq).expand(b, seq),
    }
