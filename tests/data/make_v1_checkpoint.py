"""Writes tests/data/ckpt_v1: a checkpoint in the first on-disk format (optimizer state
written whole per TP x PP slice by DP rank 0, after an all-reduce over DP), kept so that
tests/test_checkpoint_sharded.py can show that checkpoints written before the DP-sharded
format still load and resume.

It was run once, at commit 0ae41da (the last commit with the old save path):
    .venv/bin/python tests/data/make_v1_checkpoint.py
Running it on newer code writes the new format instead, so the fixture is committed.
"""

import json
import os
import shutil

import torch

from grow_megatron.config.model import ModelConfig
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.build import EngineSpec, build_engine, train_step
from grow_megatron.engine.checkpoint import save_checkpoint
from grow_megatron.engine.distributed import device_context, init_distributed
from grow_megatron.engine.resolve import engine_spec

V, S = 64, 8
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = dict(
    num_layers=2,
    hidden_size=16,
    ffn_hidden_size=24,
    num_attention_heads=2,
    num_query_groups=1,
    vocab_size=V,
    seq_length=S,
)


def batch(seed: int, b: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, V, (b, S + 1), generator=g)
    return {
        "tokens": t[:, :-1],
        "labels": t[:, 1:],
        "loss_mask": torch.ones(b, S),
        "position_ids": torch.arange(S).expand(b, S),
    }


def spec() -> EngineSpec:
    return engine_spec(ModelConfig(**MODEL), V, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0))


if __name__ == "__main__":
    out = os.path.join(HERE, "ckpt_v1")
    shutil.rmtree(out, ignore_errors=True)
    with device_context():
        init_distributed(1, 1, seed=3)
        torch.manual_seed(0)
        e = build_engine(spec(), 2)
        for s in range(2):
            train_step(e, [batch(s)], 1e-2)
        d = save_checkpoint(e, out, 2, {"name": "fixture-v1", "growths": []})
        # What resuming must reproduce: the losses of the next two steps of the uninterrupted run.
        after = [train_step(e, [batch(s)], 1e-2)["loss"] for s in (2, 3)]
    with open(os.path.join(out, "expected_losses.json"), "w") as f:
        json.dump(after, f)
    print(d, sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs), "bytes")
