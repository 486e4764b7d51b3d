"""What a run is, resolved once from its config and its process layout: the growth plan, the
precision, whether the Triton kernels run, the vocabulary the model is built with, and the
engine spec that holds them.

Training, the benchmark, offline growth and conversion all take their spec from here, so a
setting (`train.precision: auto`, `model.kernels: auto`, an unpadded vocabulary under TP) means
the same in each of them, and every refusal of a config comes in one line before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import ModelConfig, padded_vocab
from grow_megatron.config.run import RunConfig, load_run_config
from grow_megatron.config.rundir import RunDir
from grow_megatron.config.training import OptimConfig
from grow_megatron.data.datasets import build_tokenizer
from grow_megatron.data.tokenizer import Tokenizer, load_tokenizer
from grow_megatron.engine.build import EngineSpec, ScaleOptions
from grow_megatron.engine.checkpoint import latest_checkpoint, tensor_specs
from grow_megatron.engine.checkpoint.keys import EMBED, model_key
from grow_megatron.engine.device import Device
from grow_megatron.engine.distributed import Layout
from grow_megatron.engine.memory import check_fits
from grow_megatron.growth.schedule import GrowthPlan, plan_from_config


@dataclass(frozen=True)
class ResolvedRun:
    """Everything a run needs besides its data and its state."""

    cfg: RunConfig
    layout: Layout
    plan: GrowthPlan
    """The config's growth plan (a static plan when growth is off)."""
    bf16: bool
    """bf16 mixed precision (fp32 otherwise)."""
    use_kernels: bool
    """The fused Triton kernels (the plain-PyTorch reference path otherwise)."""
    vocab: int
    """The vocabulary the model is built with: model.vocab_size or the tokenizer's, padded so
    that every TP rank holds an equal slice."""
    spec: EngineSpec
    tokenizer: Tokenizer | None
    """The run's tokenizer; None for a run on random tokens (the benchmark)."""
    kernel_timings: dict | None = None
    """model.kernels=auto on a GPU: {kernel: (kernel ms, reference ms)} that chose spec.kernels."""

    def describe(self) -> str:
        """Precision, kernels, vocabulary and the scale settings, as the run's first note states them."""
        s = self.spec
        kernels = "on" if self.use_kernels else "off"
        if self.kernel_timings is not None:
            from grow_megatron.kernels.select import describe

            kernels = describe(s.kernels or (), self.kernel_timings)
        elif self.use_kernels and s.kernels is not None:
            kernels = f"on: {', '.join(s.kernels)}"
        extra = (", compiled per layer" if s.compile else "") + (
            f", fp8 {s.fp8}{' (emulated)' if s.fp8_emulate else ''}" if s.fp8 != "off" else ""
        )
        return f"{'bf16' if self.bf16 else 'fp32'}, kernels {kernels}, vocab {self.vocab}{extra}, {s.scale.describe()}"


def engine_spec(
    model: ModelConfig,
    vocab_size: int,
    *,
    optim: OptimConfig | None = None,
    bf16: bool = False,
    use_kernels: bool = False,
    tp: int = 1,
    pp: int = 1,
    vpp: int = 1,
    final_split: tuple[int, ...] | None = None,
    seed: int = 0,
    compile: bool = False,
    fp8: str = "off",
    fp8_emulate: bool = False,
    kernels: tuple[str, ...] | None = None,
    scale: ScaleOptions | None = None,
    device: Device | None = None,
) -> EngineSpec:
    """The one constructor of EngineSpec. Without a run config (offline growth, conversion, the
    growth and checkpoint benchmarks) the defaults are a single-process fp32 engine on the
    reference path, eager, without FP8, overlap, sequence parallelism or recompute, on this
    process's device; `optim` matters only to an engine that steps (default: OptimConfig())."""
    return EngineSpec(
        model,
        optim if optim is not None else OptimConfig(),
        vocab_size,
        bf16=bf16,
        use_kernels=use_kernels,
        tp=tp,
        pp=pp,
        vpp=vpp,
        final_split=final_split,
        seed=seed,
        compile=compile,
        fp8=fp8,
        fp8_emulate=fp8_emulate,
        kernels=kernels,
        scale=scale if scale is not None else ScaleOptions(),
        device=device if device is not None else Device.local(),
    )


def planned_layout(cfg: RunConfig, world: int, rank: int = 0) -> Layout:
    """The layout a job of `world` processes gets from init_distributed, known before the
    process group exists (the benchmark resolves its run before starting one)."""
    tp, pp = cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel
    return Layout(world, rank, tp, pp, world // (tp * pp))


def resolve_run(
    cfg: RunConfig, layout: Layout, *, random_tokens: bool = False, device: str | None = None
) -> ResolvedRun:
    """Resolve `cfg` for `layout`, refusing an unrunnable config in one line (ConfigError).

    The checks run cheapest first, and the tokenizer (which may be trained, once, on the raw
    data) only after the plan, precision and kernels passed. `random_tokens`: the run draws
    random token ids below model.vocab_size (the benchmark), so no tokenizer is built and the
    memory estimate, which counts the config's batches and data index, is not made. `device`:
    "cuda" or "cpu", default the layout's (the one this process has); auto precision and kernels
    follow it, and the engine is built on it."""
    device = layout.device.type if device is None else device
    cfg.validate(layout.world)
    plan = plan_from_config(cfg)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device == "cuda")
    use_kernels = _use_kernels(cfg.model.kernels, device)
    _check_fp8(cfg, layout, device)
    tokenizer = None if random_tokens else build_tokenizer(cfg.data)
    vocab = padded_vocab(_vocab_size(cfg.model, tokenizer), layout.tp)
    scale = scale_options(cfg, device)
    if not random_tokens:
        check_fits(cfg, vocab, layout.tp, layout.pp, layout.dp, bf16, Device(device), scale.sequence_parallel)
    kernels, timings = None, None
    if use_kernels and cfg.model.kernels == "auto":
        timings = _time_kernels(cfg, layout, vocab, bf16)
        from grow_megatron.kernels.select import winners

        kernels = winners(timings)
        use_kernels = bool(kernels)
    par = cfg.parallel
    spec = engine_spec(
        cfg.model,
        vocab,
        optim=cfg.optim,
        bf16=bf16,
        use_kernels=use_kernels,
        tp=layout.tp,
        pp=layout.pp,
        vpp=par.virtual_stages,
        final_split=tuple(par.pipeline_split) if par.pipeline_split else None,
        seed=cfg.train.seed,
        compile=cfg.model.compile,
        fp8=cfg.model.fp8,
        fp8_emulate=cfg.model.fp8_emulate,
        kernels=kernels,
        scale=scale,
        device=Device(device),
    )
    _check_recompute_groups(cfg, plan, spec)
    return ResolvedRun(cfg, layout, plan, bf16, use_kernels, vocab, spec, tokenizer, timings)


def _time_kernels(cfg: RunConfig, layout: Layout, vocab: int, bf16: bool) -> dict:
    """model.kernels=auto: each kernel against its reference at this run's per-rank shapes, timed
    on rank 0 (every rank must build the same model) and sent to the others."""
    from grow_megatron.engine.distributed import broadcast_from_rank0, rank
    from grow_megatron.kernels.select import Shapes, time_kernels

    m, tp = cfg.model, layout.tp
    timings = None
    if rank() == 0:
        shapes = Shapes(
            tokens=cfg.train.micro_batch_size * m.seq_length,
            hidden=m.hidden_size,
            ffn=m.ffn_hidden_size // tp,
            heads=m.num_attention_heads // tp,
            kv_heads=max(1, m.kv_heads // tp),
            head_dim=m.head_dim,
            vocab=vocab,
            seq=m.seq_length,
        )
        timings = time_kernels(shapes, torch.bfloat16 if bf16 else torch.float32, "cuda")
    return broadcast_from_rank0(timings)


def scale_options(cfg: RunConfig, device: str) -> ScaleOptions:
    """parallel.* overlap and sequence parallelism (auto decided for `device`) and train.recompute."""
    par, tc = cfg.parallel, cfg.train
    return ScaleOptions(
        **par.resolved_scale(device, cfg.model.seq_length),
        bucket_size=par.bucket_size,
        align_grad_reduce=par.align_grad_reduce,
        align_param_gather=par.align_param_gather,
        recompute=tc.recompute,
        recompute_method=tc.recompute_method,
        recompute_num_layers=tc.recompute_num_layers,
        recompute_modules=tuple(tc.recompute_modules),
    )


def _check_recompute_groups(cfg: RunConfig, plan: GrowthPlan, spec: EngineSpec) -> None:
    """Uniform full recompute walks each stage's layers in groups of recompute_num_layers (megatron
    indexes past the stage's last layer otherwise): the groups must tile every stage at every depth
    the run will have."""
    tc = cfg.train
    if tc.recompute != "full" or tc.recompute_method != "uniform" or tc.recompute_num_layers == 1:
        return
    for depth in sorted({plan.initial_depth, *(g.new_depth for g in plan.growths)}):
        split = spec.split_for(depth)
        if any(n % tc.recompute_num_layers for n in split):
            raise ConfigError(
                "train.recompute_num_layers",
                tc.recompute_num_layers,
                f"must divide the layers of every pipeline stage, but depth {depth} splits into "
                f"{list(split)}: use a divisor of them, 1, or train.recompute_method=block",
            )


def _use_kernels(setting: str, device: str) -> bool:
    if not (setting == "on" or (setting == "auto" and device == "cuda")):
        return False
    # Imported only when wanted: importing triton fixes whether it interprets (TRITON_INTERPRET
    # is read then), and the reference path must not depend on triton at all.
    from grow_megatron.kernels import triton_available

    if not triton_available(device):
        raise ConfigError(
            "model.kernels",
            setting,
            "the Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 to run them, slowly, in "
            "Triton's interpreter on CPU); use model.kernels=auto or off",
        )
    return True


def _check_fp8(cfg: RunConfig, layout: Layout, device: str) -> None:
    """model.fp8 runs where it can, else one line saying why and what to set."""
    fp8 = cfg.model.fp8
    if fp8 == "off":
        return
    if layout.tp > 1:
        raise ConfigError(
            "model.fp8",
            fp8,
            f"runs with parallel.tensor_parallel 1 only (this run has {layout.tp}): "
            "set model.fp8=off or tensor_parallel=1",
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "model.fp8", fp8, f"needs torchao (pip install torchao, or the package's [fp8] extra): {err}"
        ) from None
    if cfg.model.fp8_emulate:
        return
    if device != "cuda" or not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
        raise ConfigError(
            "model.fp8",
            fp8,
            "needs a GPU with FP8 matmuls (compute capability >= 8.9, e.g. H100), "
            "and this process has none: set model.fp8=off (or model.fp8_emulate=true "
            "to run the FP8 casts with emulated matmuls, for tests)",
        )


def _vocab_size(model: ModelConfig, tokenizer: Tokenizer | None) -> int:
    """model.vocab_size, or the tokenizer's; never smaller than the tokenizer's."""
    if tokenizer is None:
        if model.vocab_size is None:
            raise ConfigError(
                "model.vocab_size",
                None,
                "is empty, and a run on random tokens has no tokenizer to take the vocabulary from: set it",
            )
        return model.vocab_size
    if model.vocab_size is not None and model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            "model.vocab_size",
            model.vocab_size,
            f"is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size}, {tokenizer.source}), so "
            f"its token ids would index past the embedding: leave it empty to take the tokenizer's, or "
            f"set it >= {tokenizer.vocab_size}",
        )
    return model.vocab_size or tokenizer.vocab_size


def run_vocab(cfg: RunConfig, ckpt_root: str | None = None) -> tuple[int, str]:
    """(vocabulary size the trainer builds, where it comes from) for a RunConfig; `ckpt_root`: a
    trained run's checkpoints, whose latest gives the exact figure."""
    if ckpt_root:
        ckpt = latest_checkpoint(ckpt_root)
        if ckpt is not None:
            shape, _ = tensor_specs(ckpt)[model_key(EMBED)]
            return shape[0], f"the embedding of {ckpt}"
    tp = cfg.parallel.tensor_parallel
    if cfg.model.vocab_size is not None:
        v, source = cfg.model.vocab_size, "model.vocab_size"
    elif cfg.data.tokenizer or not cfg.data.tokenizer_vocab_size:
        v = load_tokenizer(cfg.data.tokenizer, eod_token=cfg.data.eod_token).vocab_size
        source = f"tokenizer {cfg.data.tokenizer}" if cfg.data.tokenizer else "the embedded tokenizer"
    else:  # the BPE the run trains on its data: as large as asked (not trained here)
        v, source = cfg.data.tokenizer_vocab_size, "data.tokenizer_vocab_size"
    padded = padded_vocab(v, tp)
    return padded, source + (f", padded from {v} for tensor_parallel={tp}" if padded != v else "")


def run_flops_inputs(path: str) -> dict[str, Any]:
    """Shape, vocabulary, schedule, steps and batch of a YAML run config (grow_megatron.config.run)
    or of a run directory's config.yaml: what `grow-megatron flops` counts for a run."""
    run = RunDir(path) if os.path.isdir(path) and RunDir(path).is_run() else None
    cfg = load_run_config(run.config if run else path)
    m = cfg.model
    vocab, source = run_vocab(cfg, run.checkpoints if run else None)
    out: dict[str, Any] = {
        "num_layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "ffn_hidden_size": m.ffn_hidden_size,
        "num_attention_heads": m.num_attention_heads,
        "num_query_groups": m.kv_heads,
        "seq_length": m.seq_length,
        "steps": cfg.train.steps,
        "global_batch": cfg.train.global_batch_size,
        "vocab_size": vocab,
        "vocab_source": source,
    }
    if m.loop is not None and m.loop.repeats > 1:
        out["loop"] = {
            **m.loop.spec.to_dict(),
            "from_step": m.loop.from_step,
            "unrolled_depth": m.loop.spec.unrolled_depth(m.num_layers),
        }
    if cfg.growth.enabled:
        # The same PROP-alpha stage lengths the trainer's plan has (the operator does not change FLOPs).
        out.update(block_size=cfg.growth.block_size, grow_steps=cfg.grow_steps, alpha=cfg.growth.alpha)
    return out
