"""Reading and writing grow_megatron checkpoints for conversion.

Reading needs no process group and no model: a checkpoint is a torch.distributed.checkpoint
(DCP) directory of global tensors (megatron's `torch_dist` backend), so each tensor is read
whole with `no_dist=True`, whatever TP x PP x DP layout wrote it (DCP reassembles the shards).
Writing goes through a real single-process engine and `save_checkpoint`, so a converted
checkpoint is byte-for-byte the format training writes and resumes from.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref

import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.rundir import CHECKPOINTS, RunDir
from grow_megatron.convert.keymap import check_shapes, expected_native_shapes
from grow_megatron.engine.checkpoint import keys, verify_checkpoint
from grow_megatron.model.looping import apply_loop_to_engine

_HOLD_TRIES = 5
"""Newest checkpoints tried when each is pruned before it could be held (a trainer saving and
pruning faster than a hold takes: a handful of directory entries)."""

# The engine modules that import megatron-core (seconds) are imported in the functions that use
# them: eval and analyze of a Hugging Face directory go through convert/ and never need them.


def resolve_checkpoint(path: str) -> tuple[str, str | None]:
    """(checkpoint dir, run dir or None) for a checkpoint dir or a run dir (its latest checkpoint)."""
    from grow_megatron.engine.checkpoint import META, latest_checkpoint  # megatron-core: see the note at the top

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ConfigError("checkpoint", path, "no such directory (give a checkpoint directory or a run directory)")
    if os.path.isfile(os.path.join(path, META)):
        parent = os.path.dirname(os.path.dirname(path))
        return path, parent if RunDir(parent).is_run() else None
    if os.path.isdir(RunDir(path).checkpoints):
        ckpt = latest_checkpoint(RunDir(path).checkpoints)
        if ckpt is None:
            raise ConfigError("checkpoint", path, f"run directory has no complete checkpoint under {CHECKPOINTS}/")
        return ckpt, path
    raise ConfigError(
        "checkpoint",
        path,
        f"is neither a checkpoint directory (with meta.json) nor a run directory (with {CHECKPOINTS}/)",
    )


class NativeReader:
    """Global tensors of one checkpoint, read one key at a time."""

    def __init__(self, ckpt_dir: str, verify: bool = True, main_params: bool = False, run_dir: str | None = None):
        """`verify`: check the files against the checkpoint's manifest once, here (reads are
        then unchecked); off for callers that load through load_checkpoint, which verifies.
        `main_params`: read the optimizer's fp32 main copies instead of the weights (the more
        precise weights of a bf16 run). Of the tensor shards only the tensors this reader
        reads are checked; every other file of the checkpoint is checked whole.

        The checkpoint is held first (engine.checkpoint.hold_checkpoint): a trainer running
        beside this reader may prune it meanwhile without pulling the files away. `run_dir`:
        `ckpt_dir` is that run's newest checkpoint, so one pruned before it could be held is
        replaced by the run's new newest one. `source` is the checkpoint read, `dir` where its
        files are read from."""
        # megatron-core: see the note at the top
        from grow_megatron.engine.checkpoint import (
            CheckpointGone,
            hold_checkpoint,
            latest_checkpoint,
            pruned_under_reader,
            read_meta,
            release_checkpoint,
            tensor_specs,
        )

        self.source = ckpt_dir
        for attempt in range(_HOLD_TRIES):
            try:
                held = hold_checkpoint(self.source)
                break
            except CheckpointGone:
                newest = latest_checkpoint(RunDir(run_dir).checkpoints) if run_dir else None
                if newest is None or attempt == _HOLD_TRIES - 1:
                    raise pruned_under_reader(self.source) from None
                self.source = newest
        self.dir = held or self.source
        self._release = weakref.finalize(self, release_checkpoint, held)
        with self._named():
            self.meta = read_meta(self.dir)
            self.state = "param" if main_params else None
            if verify:
                verify_checkpoint(self.dir, keys=lambda key: self._owns(key))
            specs = tensor_specs(self.dir)
        # Model-space names: the weights' (shapes, dtypes) and the spec of what read() reads.
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._read_specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for k, spec in specs.items():
            parsed = keys.parse_state_key(k)
            if parsed is None:
                continue
            state, name = parsed
            if state is None:
                self.shapes[name], self.dtypes[name] = spec
            if state == self.state:
                self._read_specs[name] = spec
        if keys.EMBED not in self.shapes:
            raise ConfigError(
                "checkpoint", self.source, f"holds no {keys.model_key(keys.EMBED)}: not a grow_megatron checkpoint"
            )

    @contextlib.contextmanager
    def _named(self):
        """Errors name the checkpoint, not the reader's hold on it."""
        try:
            yield
        except ConfigError as err:
            if self.dir == self.source:
                raise
            fix = lambda text: text.replace(self.dir, self.source) if isinstance(text, str) else text  # noqa: E731
            raise ConfigError(
                fix(err.path),
                fix(err.value),
                fix(err.allowed).replace(os.path.basename(self.dir), os.path.basename(self.source)),
            ) from None

    def _key(self, name: str) -> str:
        """The checkpoint key read() reads for model-space `name`."""
        key = keys.model_key(name)
        return key if self.state is None else keys.state_key(self.state, key)

    def _owns(self, key: str) -> bool:
        parsed = keys.parse_state_key(key)
        return parsed is not None and parsed[0] == self.state

    @property
    def depth(self) -> int:
        return int(self.meta["depth"])

    @property
    def vocab_size(self) -> int:
        return self.shapes[keys.EMBED][0]

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (the main copies, when read, are fp32)."""
        return self.dtypes[keys.EMBED]

    @property
    def read_dtype(self) -> torch.dtype:
        """The dtype of what read() returns."""
        return self._read_specs[keys.EMBED][1]

    def read(self, name: str) -> torch.Tensor:
        """The whole global tensor of model-space `name` (the weight, or its main copy), through
        the checkpoint's one reader (one-line errors for truncated or damaged files)."""
        from grow_megatron.engine.checkpoint import read_global_tensors  # megatron-core: see the note at the top

        key = self._key(name)
        with self._named():
            return read_global_tensors(self.dir, {key: self._read_specs[name]}, verify=False)[key]

    def check(self, model: ModelConfig) -> None:
        check_shapes(self.shapes, expected_native_shapes(model), f"checkpoint {self.source} vs its config")


# --- engines (single process) --------------------------------------------------------------


def _engine(model: ModelConfig, depth: int, vocab_size: int):
    # megatron-core: see the note at the top
    from grow_megatron.engine.build import build_engine
    from grow_megatron.engine.distributed import init_distributed
    from grow_megatron.engine.resolve import engine_spec

    layout = init_distributed(1, 1, seed=0)
    if layout.world != 1:
        raise RuntimeError("conversion runs in a single process (do not launch it with torchrun)")
    return build_engine(engine_spec(model, vocab_size), depth)


def write_native_checkpoint(
    native: dict[str, torch.Tensor], model: ModelConfig, depth: int, vocab_size: int, ckpt_root: str, meta: dict
) -> str:
    """Save global native tensors (stacked layer axis) as step-0 checkpoint with fresh AdamW state.

    Must run inside `device_context()`. The tensors go into a single-process fp32 engine, whose
    optimizer has no state yet: save_checkpoint writes zero moments and step 0, exactly what
    a fresh optimizer holds."""
    from grow_megatron.engine.checkpoint import save_checkpoint  # megatron-core: see the note at the top

    engine = _engine(model, depth, vocab_size)
    chunk = engine.model[0].module
    with torch.no_grad():
        for name, p in chunk.named_parameters():
            if name == keys.OUTPUT_LAYER:  # tied: shares the embedding (absent at PP=1)
                continue
            key, layer = keys.stacked_name(name)
            src = native[key] if layer is None else native[key][layer]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"{name}: converted tensor {tuple(src.shape)} != model {tuple(p.shape)}")
            # In place: with fp32 params the distributed optimizer's main params are views of them.
            p.copy_(src.to(p.dtype))
    return save_checkpoint(engine, ckpt_root, 0, meta)


def native_logits(ckpt_dir: str, model: ModelConfig, tokens: torch.Tensor, loop=None) -> torch.Tensor:
    """Logits [b, s, V] of the native GPTModel loaded from `ckpt_dir` (fp32, CPU or GPU), looped
    by `loop` (a LoopSpec) when given.

    Must run inside `device_context()`."""
    from grow_megatron.engine.checkpoint import load_checkpoint  # megatron-core: see the note at the top

    reader = NativeReader(ckpt_dir, verify=False)
    engine = _engine(model, reader.depth, reader.vocab_size)
    load_checkpoint(engine, reader.dir)
    if loop is not None:
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
