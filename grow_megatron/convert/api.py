"""Conversions: native checkpoint -> HF Llama directory / in-memory model, and HF -> native run dir."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from grow_megatron.config.base import ConfigError, to_dict
from grow_megatron.config.data import DataConfig
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import RunConfig, RunInfo, dump_run_config, read_run_info
from grow_megatron.config.rundir import CHECKPOINTS, CONFIG, RunDir, growth_events
from grow_megatron.convert import hf as H
from grow_megatron.convert.keymap import (
    HF_EMBED,
    HF_NORM,
    hf_keys,
    hf_sources,
    hf_tensor_to_native,
    native_tensor_to_hf,
)
from grow_megatron.convert.native import NativeReader, resolve_checkpoint, write_json, write_native_checkpoint
from grow_megatron.engine.checkpoint.keys import EMBED, FINAL_NORM, LAYER_SUFFIXES, layer_key
from grow_megatron.engine.faults import fault_point
from grow_megatron.engine.staging import remove_leftovers, staged_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTypeLike = str | torch.dtype | None


def _dtype(dtype: DTypeLike, default: torch.dtype) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, f"choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    # One step per (tensor kind, layer): the stacked checkpoint is streamed one kind at a time.
    return tqdm(iterable, total=total, desc=desc, unit="tensor", leave=False)


# --- native -> HF ----------------------------------------------------------------------------


class NativeSource:
    """A native checkpoint opened for export: reader, run config, shape."""

    def __init__(self, path: str, config: str | None = None, main_params: bool = False):
        self.ckpt_dir, self.run_dir = resolve_checkpoint(path)
        if config is None:
            if self.run_dir is None:
                raise ConfigError(
                    "config",
                    None,
                    f"no {CONFIG} found for {self.ckpt_dir} (it is looked for in the "
                    "run directory two levels up); give the run's config with --config",
                )
            config = RunDir(self.run_dir).config
        self.run: RunInfo = read_run_info(config)
        # fp32 main params (the optimizer's copy) are the more precise weights of a bf16 run.
        # A run directory reads its newest checkpoint: held against a live trainer's pruning,
        # or, pruned before it could be held, the next newest (NativeReader).
        given_run = os.path.abspath(os.path.expanduser(path)) == self.run_dir
        self.reader = NativeReader(self.ckpt_dir, main_params=main_params, run_dir=self.run_dir if given_run else None)
        self.ckpt_dir = self.reader.source
        stored = dataclasses.replace(self.run.model, num_layers=self.reader.depth, vocab_size=self.reader.vocab_size)
        self.reader.check(stored)
        # A loop-adapted model (model.loop, from its from_step on) exports as its unrolled depth:
        # copies of the tied layers, each with the LN-Scaling factor of its unrolled position.
        loop = self.run.model.loop
        self.loop = loop.spec if loop is not None and loop.active_at(int(self.reader.meta.get("step") or 0)) else None
        self.shape: ModelConfig = (
            stored if self.loop is None else stored.with_layers(self.loop.unrolled_depth(stored.num_layers))
        )

    @property
    def source_map(self) -> tuple[int, ...]:
        """For each exported layer, the stored layer it copies (the identity without a loop)."""
        depth = self.reader.depth
        return self.loop.source_map(depth) if self.loop is not None else tuple(range(depth))

    def read(self, name: str) -> torch.Tensor:
        return self.reader.read(name)

    @property
    def default_dtype(self) -> torch.dtype:
        return self.reader.read_dtype

    def history(self) -> dict[str, Any]:
        """The growth record exported with the model (grow_megatron.json, config.json)."""
        m = self.reader.meta
        growths = growth_events(m.get("growths"))
        depths = [growths[0].old_depth] + [g.new_depth for g in growths] if growths else [m["depth"]]
        return {
            "format_version": 1,
            "name": m.get("name"),
            "step": m.get("step"),
            "depth": m.get("depth"),
            "operator": m.get("operator"),
            "stage_steps": m.get("stage_steps"),
            "depths": depths,
            "growth_steps": [g.step for g in growths],
            "growths": [g.to_dict() for g in growths],
            "ln_scaling": bool(self.shape.ln_scaling),
            "ln_scaling_folded_into_norms": bool(self.shape.ln_scaling),
            "source_checkpoint": self.ckpt_dir,
            "source": m.get("source"),
            "loop": None
            if self.loop is None
            else {**self.loop.to_dict(), "source_map": list(self.source_map), "unrolled_from_depth": self.reader.depth},
            "model": {k: (to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in vars(self.run.model).items()},
        }

    def tokenizer(self):
        from grow_megatron.data import build_tokenizer  # megatron-core (its tokenizer base): see native.py

        return build_tokenizer(self.run.data)


def native_to_hf_state_dict(
    src: NativeSource, dtype: torch.dtype, progress: bool = False
) -> OrderedDict[str, torch.Tensor]:
    """HF tensors of the whole model. Streams one stacked native tensor at a time, so the peak
    is the output plus one [L, ...] tensor, not two copies of the model."""
    shape = src.shape
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    out[HF_EMBED] = src.read(EMBED).to(dtype)
    steps = [(s, i) for s in LAYER_SUFFIXES for i in range(shape.num_layers)]
    sources = src.source_map
    stacked, current = None, None
    desc = f"to-hf ({shape.num_layers} layers x {len(LAYER_SUFFIXES)} tensors)"
    for suffix, i in _progress(steps, len(steps), desc, progress):
        if suffix != current:
            stacked, current = src.read(layer_key(suffix)), suffix  # [L, ...]
        # Folding etc. in fp32 (a bf16 checkpoint's gains are folded once, then rounded once).
        t = stacked[sources[i]].float()
        if sources[i] != i:  # an unrolled copy of a looped layer: its own storage (safetensors refuses shared)
            t = t.clone()
        for k, v in native_tensor_to_hf(suffix, i, t, shape).items():
            out[k] = v.to(dtype)
    del stacked
    out[HF_NORM] = src.read(FINAL_NORM).to(dtype)
    return OrderedDict((k, out[k]) for k in hf_keys(shape.num_layers))


def _hf_config_for(src: NativeSource, dtype: torch.dtype, tok=None):
    eod = tok.eod if tok is not None else None
    return H.make_hf_config(src.shape, bos_token_id=eod, eos_token_id=eod, dtype=dtype, history=src.history())


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def to_hf(
    ckpt: str,
    out_dir: str,
    *,
    config: str | None = None,
    dtype: DTypeLike = None,
    main_params: bool = False,
    tokenizer: bool = True,
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Write a transformers LlamaForCausalLM directory for a native checkpoint (or a run's latest).

    LN-Scaling is folded into the norm gains, so the result is a plain Llama. An existing,
    non-empty out_dir is refused unless force (it is then replaced whole). The export is written
    into a staging directory beside out_dir (config.json last) and renamed into place when
    complete (engine/staging.py), so a kill never leaves a partial export that transformers
    would load; what a killed export left is removed (and listed in the summary). Returns a summary."""
    from transformers import GenerationConfig  # seconds to import; only exports need it

    t0 = time.perf_counter()
    removed = remove_leftovers(out_dir)
    if not force and os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ConfigError(
            "OUT_DIR",
            out_dir,
            "already exists and is not empty: choose a new directory, or pass --force to overwrite the export in it",
        )
    src = NativeSource(ckpt, config, main_params)
    dt = _dtype(dtype, src.default_dtype)
    tok = src.tokenizer() if tokenizer else None
    if tok is not None and tok.vocab_size > src.shape.vocab_size:
        raise ConfigError(
            "data.tokenizer",
            tok.source,
            f"has {tok.vocab_size} tokens but the checkpoint's embedding "
            f"only {src.shape.vocab_size}: this is not the run's tokenizer",
        )
    sd = native_to_hf_state_dict(src, dt, progress)
    cfg = _hf_config_for(src, dt, tok)
    with staged_dir(out_dir, replace=force, before_publish=lambda: fault_point("export.staged")) as stage:
        weights = os.path.join(stage, "model.safetensors")
        save_file(sd, weights, metadata={"format": "pt"})
        # safetensors writes 0600; give it the mode every other file here gets (0666 less the umask).
        os.chmod(weights, 0o666 & ~_umask())
        fault_point("export.weights")
        GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id).save_pretrained(stage)
        if tok is not None:
            tok.save(stage)
        write_json(os.path.join(stage, H.HISTORY_FILE), src.history())
        H.write_hf_config(cfg, stage)  # last: without config.json a directory is no model to transformers
    return {
        "out_dir": out_dir,
        "checkpoint": src.ckpt_dir,
        "depth": src.shape.num_layers,
        "dtype": str(dt),
        "params": sum(t.numel() for t in sd.values()),
        "ln_scaling_folded": src.shape.ln_scaling,
        "tokenizer": tok is not None,
        "seconds": time.perf_counter() - t0,
        "removed_leftovers": removed,
    }


def _no_init():
    # transformers is imported where it is used: it takes seconds (its model classes tens).
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def native_to_hf_model(src: NativeSource, dtype: torch.dtype = torch.float32, tok=None, progress: bool = False):
    """An in-memory LlamaForCausalLM with the weights of the native checkpoint (no files written)."""
    from transformers import LlamaForCausalLM  # seconds to import (see _no_init)

    sd = native_to_hf_state_dict(src, dtype, progress)
    cfg = _hf_config_for(src, dtype, tok)
    with _no_init():
        model = LlamaForCausalLM(cfg)
    model.to(dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"in-memory export: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def hf_tokenizer(tok):
    """A transformers fast tokenizer equivalent to our Tokenizer (via its saved files)."""
    from transformers import AutoTokenizer  # seconds to import (see _no_init)

    with tempfile.TemporaryDirectory() as d:
        tok.save(d)
        return AutoTokenizer.from_pretrained(d)


# --- HF -> native ----------------------------------------------------------------------------


def hf_to_native_state_dict(
    weights: dict[str, torch.Tensor], shape: ModelConfig, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Global native tensors (stacked layer axis, fp32) from HF tensors. Consumes `weights`
    (entries are popped once used) so the peak stays near one copy of the model."""
    out: dict[str, torch.Tensor] = {}
    bar = _progress(
        range(len(LAYER_SUFFIXES) * shape.num_layers),
        len(LAYER_SUFFIXES) * shape.num_layers,
        f"from-hf ({shape.num_layers} layers x {len(LAYER_SUFFIXES)} tensors)",
        progress,
    )
    it = iter(bar)
    for suffix in LAYER_SUFFIXES:
        per_layer = []
        for i in range(shape.num_layers):
            srcs = {k: weights[k].float() for k in hf_sources(suffix, i)}
            per_layer.append(hf_tensor_to_native(suffix, i, srcs, shape))
            for k in srcs:
                weights.pop(k)
            next(it, None)
        out[layer_key(suffix)] = torch.stack(per_layer)  # [L, ...]
        del per_layer
    out[EMBED] = weights.pop(HF_EMBED).float()
    out[FINAL_NORM] = weights.pop(HF_NORM).float()
    if hasattr(bar, "close"):
        bar.close()
    return out


def _copy_tokenizer(hf_dir: str, out_dir: str) -> str | None:
    if not os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        return None
    dst = RunDir(out_dir).tokenizer
    os.makedirs(dst, exist_ok=True)
    for name in H.TOKENIZER_FILES:
        if os.path.isfile(os.path.join(hf_dir, name)):
            shutil.copyfile(os.path.join(hf_dir, name), os.path.join(dst, name))
    return dst


def from_hf(
    hf_dir: str,
    out_dir: str,
    *,
    ln_scaling: bool = False,
    seq_length: int | None = None,
    name: str | None = None,
    progress: bool = True,
) -> dict:
    """Write a run directory OUT_DIR (config.yaml, checkpoints/step_00000000, tokenizer/) holding the
    HF model as a step-0 native checkpoint with a fresh optimizer, ready for `grow-megatron train`.

    ln_scaling: the model is to continue with LN-Scaling on; its (folded) HF norm gains are
    unfolded by sqrt(l), so that the native forward equals the HF one."""
    t0 = time.perf_counter()
    hf_dir = os.path.abspath(hf_dir)
    out_dir = os.path.abspath(out_dir)
    cfg = H.read_hf_config(hf_dir)
    shape = H.shape_from_hf_config(cfg, ln_scaling=ln_scaling, seq_length=seq_length)
    weights = H.load_hf_weights(hf_dir)
    H.check_hf_weights(weights, shape, cfg, hf_dir)
    ckpt_root = RunDir(out_dir).checkpoints
    if os.path.isdir(ckpt_root) and os.listdir(ckpt_root):
        raise ConfigError("out_dir", out_dir, f"already holds {CHECKPOINTS}/: choose a new directory")
    native = hf_to_native_state_dict(weights, shape, progress)
    del weights
    os.makedirs(out_dir, exist_ok=True)
    tok_dir = _copy_tokenizer(hf_dir, out_dir)
    run_name = name or os.path.basename(hf_dir.rstrip("/")) or "hf"
    run_cfg = RunConfig(name=run_name, run_dir=out_dir, model=shape, data=DataConfig(tokenizer=tok_dir)).validate(1)
    if tok_dir:
        from grow_megatron.data import build_tokenizer  # megatron-core: see convert/native.py

        tok = build_tokenizer(run_cfg.data)
        if tok.vocab_size > shape.vocab_size:
            raise ConfigError(
                "tokenizer",
                tok_dir,
                f"has {tok.vocab_size} tokens, more than the model's vocab_size {shape.vocab_size}",
            )
    with open(RunDir(out_dir).config, "w") as f:
        f.write(dump_run_config(run_cfg))
    meta = {
        "growths": [],
        "name": run_name,
        "stage_steps": [],
        "operator": "none",
        "source": {
            "format": "huggingface",
            "path": hf_dir,
            "ln_scaling_unfolded": ln_scaling,
            "history": cfg.get(H.HISTORY_FIELD),
        },
    }
    from grow_megatron.engine.distributed import device_context  # megatron-core: see convert/native.py

    with device_context():
        ckpt = write_native_checkpoint(native, shape, shape.num_layers, shape.vocab_size, ckpt_root, meta)
    return {
        "run_dir": out_dir,
        "checkpoint": ckpt,
        "depth": shape.num_layers,
        "tokenizer": tok_dir,
        "config": RunDir(out_dir).config,
        "seconds": time.perf_counter() - t0,
    }


# --- checks ------------------------------------------------------------------------------------


def text_tokens(ckpt: str, text_file: str, *, config: str | None = None, max_rows: int = 4) -> torch.Tensor:
    """Token ids [rows, seq] of a text file under the run's tokenizer: up to max_rows
    consecutive windows of the run's context length (one shorter row if the text is short)."""
    src = NativeSource(ckpt, config)
    try:
        with open(text_file, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError("--text", text_file, "no such file") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ConfigError("--text", text_file, "is not a UTF-8 text file") from None
    ids = src.tokenizer().tokenize(text)
    seq = src.shape.seq_length
    if len(ids) < 2:
        raise ConfigError("--text", text_file, f"has {len(ids)} tokens: give at least 2")
    rows = min(max_rows, len(ids) // seq)
    if rows == 0:
        return torch.tensor([ids], dtype=torch.long)  # [1, len]
    return torch.tensor(ids[: rows * seq], dtype=torch.long).view(rows, seq)  # [rows, seq]
