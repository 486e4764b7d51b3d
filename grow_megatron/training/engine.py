"""The engine: one model depth's megatron objects (model chunks in DDP, distributed optimizer).

An Engine is rebuilt at every growth (growth/manager.py moves the state across); everything
that outlives a growth (step, LR schedule, data position) lives in the training loop.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

from grow_megatron.config.model import ModelConfig
from grow_megatron.config.training import OptimConfig
from grow_megatron.growth.partition import balanced_split
from grow_megatron.model.builder import GrowTransformerConfig, build_model_chunk, make_transformer_config


@dataclass
class EngineSpec:
    """Everything needed to (re)build an engine at any depth."""

    model: ModelConfig
    optim: OptimConfig
    vocab_size: int
    bf16: bool
    use_kernels: bool
    tp: int = 1
    pp: int = 1
    final_split: Optional[tuple[int, ...]] = None
    """User-given split at the final depth; other depths are balanced."""
    seed: int = 0
    """Seed of the initial weights (layout-independent, see GrowTransformerLayer)."""

    def split_for(self, depth: int) -> tuple[int, ...]:
        if self.final_split is not None and sum(self.final_split) == depth:
            return tuple(self.final_split)
        return balanced_split(depth, self.pp)


def _pipeline_layout(split: tuple[int, ...]) -> Optional[PipelineParallelLayerLayout]:
    if len(split) == 1:
        return None
    stages = [["decoder"] * n for n in split]
    stages[0].insert(0, "embedding")
    stages[-1].append("loss")
    return PipelineParallelLayerLayout(stages, len(split))


@dataclass
class Engine:
    spec: EngineSpec
    depth: int
    split: tuple[int, ...]
    config: GrowTransformerConfig
    model: list[DistributedDataParallel]
    optimizer: object

    def local_layers(self):
        return self.model[0].module.decoder.layers

    def named_parameters(self):
        return self.model[0].module.named_parameters()


def build_engine(spec: EngineSpec, depth: int, init_weights: bool = True) -> Engine:
    """Model chunk, DDP and distributed optimizer at `depth`; init_weights=False leaves the
    weights undrawn (the caller overwrites every one: growth, checkpoint load)."""
    split = spec.split_for(depth)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    config = make_transformer_config(
        spec.model, num_layers=depth, params_dtype=torch.bfloat16 if spec.bf16 else torch.float32,
        bf16=spec.bf16, tensor_parallel=spec.tp, pipeline_parallel=spec.pp,
        pipeline_layout=_pipeline_layout(split), use_kernels=spec.use_kernels, seed=spec.seed,
        init_weights=init_weights)
    chunk = build_model_chunk(config, spec.model, spec.vocab_size, num_local_layers=split[pp_rank])
    if torch.cuda.is_available():
        chunk.cuda(torch.cuda.current_device())
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=True, average_in_collective=True)
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk)
    o = spec.optim
    opt_config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
        adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.clip_grad, bf16=spec.bf16,
        params_dtype=config.params_dtype, use_distributed_optimizer=True)
    optimizer = get_megatron_optimizer(opt_config, [ddp])
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return Engine(spec, depth, split, config, [ddp], optimizer)


def destroy_engine(engine: Engine) -> None:
    """Drop every reference the engine holds so that its memory can be freed (growth).

    DDP's grad hooks close over the DDP object and its parameters only, so once nothing
    outside points at the model, optimizer or config callbacks, the whole old depth is garbage.
    """
    engine.model.clear()
    engine.optimizer = None
    engine.config.no_sync_func = None
    engine.config.finalize_model_grads_func = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])

    def loss_func(output_tensor):  # output_tensor: [b, s] per-token loss
        mask = batch["loss_mask"].float()
        total = (output_tensor.float() * mask).sum()
        n = mask.sum().to(torch.int)
        return total, n, {"lm loss": torch.stack([total.detach(), mask.sum()])}

    return output, loss_func


def _to_device(mb: dict) -> dict:
    if torch.cuda.is_available():
        return {k: v.cuda(non_blocking=True) for k, v in mb.items()}
    return mb


def run_microbatches(engine: Engine, microbatches: list[dict], forward_only: bool) -> torch.Tensor:
    """Forward (and backward) over the micro-batches; returns the token-mean loss on every rank."""
    if not forward_only:
        for m in engine.model:
            m.zero_grad_buffer()
        engine.optimizer.zero_grad()
    seq = microbatches[0]["tokens"].shape[1]
    mbs = microbatches[0]["tokens"].shape[0]
    out = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iter([_to_device(m) for m in microbatches]),
        model=engine.model, num_microbatches=len(microbatches), seq_length=seq, micro_batch_size=mbs,
        decoder_seq_length=seq, forward_only=forward_only)
    # Sum of (loss, tokens) over micro-batches, known on the last stage only: sum over the
    # pipeline group (zeros elsewhere), then over data-parallel replicas.
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    acc = torch.zeros(2, dtype=torch.float64, device=dev)
    for d in out:
        acc += d["lm loss"].to(acc)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(acc, group=parallel_state.get_pipeline_model_parallel_group())
    if parallel_state.get_data_parallel_world_size() > 1:
        dist.all_reduce(acc, group=parallel_state.get_data_parallel_group())
    return acc[0] / acc[1]


def set_lr(engine: Engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def train_step(engine: Engine, microbatches: list[dict], lr: float) -> dict:
    """One optimizer step; returns loss, grad norm and whether the update was applied."""
    loss = run_microbatches(engine, microbatches, forward_only=False)
    set_lr(engine, lr)
    ok, grad_norm, _ = engine.optimizer.step()
    return {"loss": float(loss), "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "update_ok": bool(ok), "lr": lr}


@torch.no_grad()
def eval_loss(engine: Engine, microbatches: Iterable[dict]) -> float:
    for m in engine.model:
        m.eval()
    try:
        return float(run_microbatches(engine, list(microbatches), forward_only=True))
    finally:
        for m in engine.model:
            m.train()
