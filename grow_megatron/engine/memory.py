"""A rough memory estimate of a run, made before anything is allocated.

An absurd size (`model.hidden_size=2**20`, `model.seq_length=10**9`, `train.steps=10**12`)
otherwise fails minutes later with a MemoryError or the OOM killer, after trying to allocate
terabytes. The estimate is deliberately simple and says so; it only has to tell "fits
somewhere near" from "cannot possibly fit":

* model state per rank (parameters of the final depth over TP x PP): weights (2 or 4 bytes),
  fp32 gradient buffer (4), AdamW state over DP (fp32 moments 8, plus an fp32 main copy 4 in
  bf16);
* activations kept for backward: 34 bytes per token and hidden unit per layer in 16-bit
  (Korthikanti et al. 2022, without the attention-score term, which fused attention does not
  keep), doubled in fp32, for the micro-batches a 1F1B pipeline holds; divided by TP under
  sequence parallelism; with full recompute only each layer's input (2 or 4 bytes) plus one
  layer's activations while it is recomputed; plus the logits (and their softmax and
  gradient) in fp32;
* megatron's sample indices for train.steps x global_batch_size samples: 16 bytes per sample
  (sample index, 2 x int32, and shuffle index, int64), built in host memory.
"""

from __future__ import annotations

import os

import psutil
import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.engine.device import Device


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def estimate(cfg, vocab: int, tp: int, pp: int, dp: int, bf16: bool, sequence_parallel: bool = False) -> dict[str, int]:
    """Bytes per rank of {model state, activations} and host bytes of {data index}."""
    m, tc = cfg.model, cfg.train
    params = m.num_params(vocab) // (tp * pp)
    state = params * ((2 if bf16 else 4) + 4) + params * (12 if bf16 else 8) // dp
    in_flight = min(pp, tc.global_batch_size // (tc.micro_batch_size * dp)) if pp > 1 else 1
    tokens = tc.micro_batch_size * m.seq_length // (tp if sequence_parallel else 1)
    width = 2 if bf16 else 4
    layers = m.num_layers // pp + 1
    per_layer = tokens * m.hidden_size * 17 * width  # 34 bytes in 16-bit
    kept = layers * tokens * m.hidden_size * width + per_layer if tc.recompute == "full" else layers * per_layer
    acts = kept * in_flight + tc.micro_batch_size * m.seq_length * (vocab // tp) * 4 * 3
    return {"model state": state, "activations": acts, "data index": tc.steps * tc.global_batch_size * 16}


# What to change when a part is too big: (field, value getter, fix).
_FIX = {
    "model state": (
        "model.hidden_size",
        lambda cfg: cfg.model.hidden_size,
        "use a smaller model (model.hidden_size / num_layers / ffn_hidden_size) or split it over more "
        "ranks (parallel.tensor_parallel / pipeline_parallel)",
    ),
    "activations": (
        "model.seq_length",
        lambda cfg: cfg.model.seq_length,
        "lower model.seq_length or train.micro_batch_size, or split over more ranks",
    ),
    "data index": ("train.steps", lambda cfg: cfg.train.steps, "lower train.steps or train.global_batch_size"),
}


def check_fits(
    cfg, vocab: int, tp: int, pp: int, dp: int, bf16: bool, device: Device, sequence_parallel: bool = False
) -> dict[str, int]:
    """Raise ConfigError, naming the estimate and the memory available, when the run cannot fit."""
    parts = estimate(cfg, vocab, tp, pp, dp, bf16, sequence_parallel)
    host_free = psutil.virtual_memory().available
    on_device = {k: parts[k] for k in ("model state", "activations")}
    if device.is_gpu:
        checks = [
            (on_device, torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, "GPU memory"),
            ({"data index": parts["data index"]}, host_free, "host memory"),
        ]
    else:
        # CPU ranks of one machine share its memory.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        checks = [
            (
                {**{k: v * local for k, v in on_device.items()}, "data index": parts["data index"]},
                host_free,
                "host memory",
            )
        ]
    for need, have, where in checks:
        total = sum(need.values())
        if total > have:
            worst = max(need, key=need.get)
            field, value, fix = _FIX[worst]
            detail = ", ".join(f"{k} {_fmt(v)}" for k, v in need.items())
            raise ConfigError(
                field,
                value(cfg),
                f"the run needs about {_fmt(total)} of {where} ({detail}; a rough "
                f"estimate), but {_fmt(have)} is available: {fix}",
            )
    return parts
