"""Reading and writing grow_megatron checkpoints for conversion.

Reading needs no process group and no model: a checkpoint is a torch.distributed.checkpoint
(DCP) directory of global tensors (megatron's `torch_dist` backend), so each tensor is read
whole with `no_dist=True`, whatever TP x PP x DP layout wrote it (DCP reassembles the shards).
Writing goes through a real single-process engine and `save_checkpoint`, so a converted
checkpoint is byte-for-byte the format training writes and resumes from.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import torch

from grow_megatron.config.base import ConfigError, from_dict
from grow_megatron.config.model import ModelConfig
from grow_megatron.convert.keymap import (EMBED, LAYER_PREFIX, LlamaShape, check_shapes,
                                          expected_native_shapes)
from grow_megatron.config.data import DataConfig

MODEL_PREFIX = "model."


def resolve_checkpoint(path: str) -> tuple[str, Optional[str]]:
    """(checkpoint dir, run dir or None) for a checkpoint dir or a run dir (its latest checkpoint)."""
    from grow_megatron.engine.checkpoint import META, latest_checkpoint

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ConfigError("checkpoint", path, "no such directory (give a checkpoint directory or a run directory)")
    if os.path.isfile(os.path.join(path, META)):
        parent = os.path.dirname(os.path.dirname(path))
        return path, parent if os.path.isfile(os.path.join(parent, "config.yaml")) else None
    if os.path.isdir(os.path.join(path, "checkpoints")):
        ckpt = latest_checkpoint(os.path.join(path, "checkpoints"))
        if ckpt is None:
            raise ConfigError("checkpoint", path, "run directory has no complete checkpoint under checkpoints/")
        return ckpt, path
    raise ConfigError("checkpoint", path, "is neither a checkpoint directory (with meta.json) nor a run directory "
                                          "(with checkpoints/)")


def is_native(path: str) -> bool:
    try:
        resolve_checkpoint(path)
        return True
    except ConfigError:
        return False


@dataclass
class RunInfo:
    """The parts of a run's config.yaml a conversion needs."""

    model: ModelConfig
    data: DataConfig
    path: str


def read_run_info(config_path: str) -> RunInfo:
    """Model and data sections of a resolved run config (the rest is not validated: a TP=2 run's
    config must still be readable in a single process)."""
    if not os.path.isfile(config_path):
        raise ConfigError("config", config_path, "file not found (give the run's config.yaml with --config)")
    from grow_megatron.config.run import read_yaml

    raw = read_yaml(config_path)
    model = from_dict(ModelConfig, ModelConfig.from_preset_dict(dict(raw.get("model") or {})), "model")
    model.validate()
    data = from_dict(DataConfig, dict(raw.get("data") or {}), "data")
    return RunInfo(model, data, os.path.abspath(config_path))


class NativeReader:
    """Global tensors of one checkpoint, read one key at a time."""

    def __init__(self, ckpt_dir: str, verify: bool = True, read_prefix: str = MODEL_PREFIX):
        """`verify`: check the files against the checkpoint's manifest once, here (reads are
        then unchecked); off for callers that load through load_checkpoint, which verifies.
        Of the tensor shards only the tensors under `read_prefix` are checked (what this
        reader's user reads: the weights, or `optimizer.param.` + the weights' keys for the
        fp32 main copies); every other file of the checkpoint is checked whole."""
        from grow_megatron.engine.checkpoint import read_meta, tensor_specs
        from grow_megatron.engine.integrity import verify_checkpoint

        self.dir = ckpt_dir
        self.meta = read_meta(ckpt_dir)
        if verify:
            verify_checkpoint(ckpt_dir, keys=lambda key: key.startswith(read_prefix))
        # Only model tensors (optimizer.* are the AdamW state; *_extra_state are empty objects).
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for k, (shape, dtype) in tensor_specs(ckpt_dir).items():
            if k.startswith(MODEL_PREFIX):
                self.shapes[k[len(MODEL_PREFIX):]] = shape
                self.dtypes[k[len(MODEL_PREFIX):]] = dtype
        if EMBED not in self.shapes:
            raise ConfigError("checkpoint", ckpt_dir, f"holds no {MODEL_PREFIX}{EMBED}: not a grow_megatron checkpoint")

    @property
    def depth(self) -> int:
        return int(self.meta["depth"])

    @property
    def vocab_size(self) -> int:
        return self.shapes[EMBED][0]

    @property
    def dtype(self) -> torch.dtype:
        return self.dtypes[EMBED]

    def read(self, key: str) -> torch.Tensor:
        """The whole global tensor `key` (without the `model.` prefix)."""
        from grow_megatron.engine.checkpoint import read_global_tensors

        full = MODEL_PREFIX + key
        return read_global_tensors(self.dir, {full: (self.shapes[key], self.dtypes[key])}, verify=False)[full]

    def check(self, shape: LlamaShape) -> None:
        check_shapes(self.shapes, expected_native_shapes(shape), f"checkpoint {self.dir} vs its config")


def shape_from_model_config(model: ModelConfig, *, num_layers: int, vocab_size: int) -> LlamaShape:
    return LlamaShape(num_layers=num_layers, hidden_size=model.hidden_size, ffn_hidden_size=model.ffn_hidden_size,
                      num_heads=model.num_attention_heads, num_kv_heads=model.kv_heads, head_dim=model.head_dim,
                      vocab_size=vocab_size, norm_eps=model.norm_eps, rope_theta=model.rope_theta,
                      seq_length=model.seq_length, ln_scaling=model.ln_scaling)


def model_config_from_shape(shape: LlamaShape) -> ModelConfig:
    return ModelConfig(num_layers=shape.num_layers, hidden_size=shape.hidden_size,
                       ffn_hidden_size=shape.ffn_hidden_size, num_attention_heads=shape.num_heads,
                       num_query_groups=shape.num_kv_heads, vocab_size=shape.vocab_size,
                       seq_length=shape.seq_length, rope_theta=shape.rope_theta, norm_eps=shape.norm_eps,
                       ln_scaling=shape.ln_scaling, kernels="off")


# --- engines (single process) --------------------------------------------------------------

def _engine(model: ModelConfig, depth: int, vocab_size: int):
    from grow_megatron.engine.distributed import init_distributed
    from grow_megatron.engine.build import build_engine
    from grow_megatron.engine.resolve import engine_spec

    layout = init_distributed(1, 1, seed=0)
    if layout.world != 1:
        raise RuntimeError("conversion runs in a single process (do not launch it with torchrun)")
    return build_engine(engine_spec(model, vocab_size), depth)


def write_native_checkpoint(native: dict[str, torch.Tensor], model: ModelConfig, depth: int, vocab_size: int,
                            ckpt_root: str, meta: dict) -> str:
    """Save global native tensors (stacked layer axis) as step-0 checkpoint with fresh AdamW state.

    Must run inside `device_context()`. The tensors go into a single-process fp32 engine, whose
    optimizer has no state yet: save_checkpoint writes zero moments and step 0, exactly what
    a fresh optimizer holds."""
    from grow_megatron.engine.checkpoint import save_checkpoint

    engine = _engine(model, depth, vocab_size)
    chunk = engine.model[0].module
    with torch.no_grad():
        for name, p in chunk.named_parameters():
            if name.startswith(LAYER_PREFIX):
                i, suffix = name[len(LAYER_PREFIX):].split(".", 1)
                src = native[LAYER_PREFIX + suffix][int(i)]
            elif name == "output_layer.weight":  # tied: shares the embedding (absent at PP=1)
                continue
            else:
                src = native[name]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"{name}: converted tensor {tuple(src.shape)} != model {tuple(p.shape)}")
            # In place: with fp32 params the distributed optimizer's main params are views of them.
            p.copy_(src.to(p.dtype))
    return save_checkpoint(engine, ckpt_root, 0, meta)


def native_logits(ckpt_dir: str, model: ModelConfig, tokens: torch.Tensor, loop=None) -> torch.Tensor:
    """Logits [b, s, V] of the native GPTModel loaded from `ckpt_dir` (fp32, CPU or GPU), looped
    by `loop` (a LoopSpec) when given.

    Must run inside `device_context()`."""
    from grow_megatron.engine.checkpoint import load_checkpoint

    reader = NativeReader(ckpt_dir, verify=False)
    engine = _engine(model, reader.depth, reader.vocab_size)
    load_checkpoint(engine, ckpt_dir)
    if loop is not None:
        from grow_megatron.model.looping import apply_loop_to_engine

        apply_loop_to_engine(engine, loop)
    chunk = engine.model[0].module.eval()
    dev = next(chunk.parameters()).device
    b, s = tokens.shape
    with torch.no_grad():
        pos = torch.arange(s, device=dev).expand(b, s)
        return chunk(tokens.to(dev), pos, None).float().cpu()  # [b, s, V]


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)
