"""The engine: one model depth's megatron objects (model chunks in DDP, distributed optimizer).

An Engine is rebuilt at every growth (engine/grow.py moves the state across); everything
that outlives a growth (step, LR schedule, data position) lives in the training loop.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

from grow_megatron.config.model import ModelConfig
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.device import Device
from grow_megatron.growth.partition import offsets, split_at
from grow_megatron.model.builder import GrowTransformerConfig, build_model_chunk, make_transformer_config


@dataclass(frozen=True)
class ScaleOptions:
    """The resolved settings that make megatron train at scale (parallel.* and train.recompute,
    `auto` already decided by engine.resolve). The engine is rebuilt from them at every depth,
    so a growth's new engine gets the same buckets, hooks, sequence-parallel regions and
    recompute as the old one."""

    overlap_grad_reduce: bool = False
    """DP gradient reduce-scatter per bucket, started by DDP's backward hooks while backward runs."""
    overlap_param_gather: bool = False
    """Distributed optimizer's parameter all-gather per bucket, started lazily by forward
    pre-hooks of the next forward (needs overlap_grad_reduce)."""
    bucket_size: int | None = None
    """Parameters per DP bucket (None: megatron's max(4e7, 1e6 x DP)); only with overlap_grad_reduce."""
    align_grad_reduce: bool = True
    """Pipeline schedules start each chunk's grad reduce at its last backward (megatron's
    grad_sync_func), on every stage at the same point of the schedule."""
    align_param_gather: bool = True
    """Pipeline schedules start every stage's param all-gather together (param_sync_func)."""
    overlap_p2p_comm: bool = False
    """Interleaved schedule: pipeline sends/receives run asynchronously beside compute."""
    sequence_parallel: bool = False
    """Norms, residuals and dropout of each TP rank hold s/TP of the sequence (TP > 1)."""
    recompute: str = "none"
    """none | selective | full (megatron's recompute_granularity)."""
    recompute_method: str = "uniform"
    """full: uniform (every group of recompute_num_layers layers) or block (the first
    recompute_num_layers layers of each stage)."""
    recompute_num_layers: int = 1
    """See recompute_method."""
    recompute_modules: tuple[str, ...] = ("core_attn",)
    """selective: the submodules whose activations are recomputed."""

    def describe(self) -> str:
        """One phrase for the run's first note."""
        on = [
            name
            for name, flag in (
                ("grad reduce", self.overlap_grad_reduce),
                ("param gather", self.overlap_param_gather),
                ("p2p", self.overlap_p2p_comm),
            )
            if flag
        ]
        recompute = self.recompute + (
            f" ({self.recompute_method}, {self.recompute_num_layers})"
            if self.recompute == "full"
            else f" ({', '.join(self.recompute_modules)})"
            if self.recompute == "selective"
            else ""
        )
        return (
            f"overlap {' + '.join(on) if on else 'off'}, sequence parallel {'on' if self.sequence_parallel else 'off'}, "
            f"recompute {recompute}"
        )

    def transformer_options(self) -> dict:
        """The TransformerConfig fields these settings set."""
        out = {"sequence_parallel": self.sequence_parallel}
        if self.overlap_p2p_comm:
            out.update(overlap_p2p_comm=True, batch_p2p_comm=False)
        if self.recompute != "none":
            out.update(
                recompute_granularity=self.recompute,
                recompute_modules=list(self.recompute_modules),
                recompute_method=self.recompute_method if self.recompute == "full" else None,
                recompute_num_layers=self.recompute_num_layers if self.recompute == "full" else None,
            )
        return out


@dataclass
class EngineSpec:
    """Everything needed to (re)build an engine at any depth; made by engine.resolve.engine_spec."""

    model: ModelConfig
    optim: OptimConfig
    vocab_size: int
    bf16: bool
    use_kernels: bool
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    """Model chunks per pipeline rank (interleaved schedule); the split then has pp x vpp stages."""
    final_split: tuple[int, ...] | None = None
    """User-given split at the final depth; other depths are balanced."""
    seed: int = 0
    """Seed of the initial weights (layout-independent, see GrowTransformerLayer)."""
    compile: bool = False
    """model.compile: each transformer layer under torch.compile."""
    fp8: str = "off"
    """model.fp8: torchao float8 recipe of the layers' linears, or off."""
    fp8_emulate: bool = False
    """model.fp8_emulate: the FP8 matmuls emulated in high precision (CPU)."""
    kernels: tuple[str, ...] | None = None
    """With use_kernels, the Triton kernels that run (kernels/select.py's names); None = all."""
    device: Device = field(default_factory=Device.local)
    """Where the engine computes (resolved once: engine.resolve, from the process's Layout)."""
    scale: ScaleOptions = field(default_factory=ScaleOptions)
    """Communication overlap, sequence parallelism and activation recompute (resolved; default all off)."""

    def split_for(self, depth: int) -> tuple[int, ...]:
        """Layers per (virtual) stage in layer order at `depth`."""
        return split_at(depth, self.pp * self.vpp, self.final_split)


def _pipeline_layout(split: tuple[int, ...], pp: int) -> PipelineParallelLayerLayout | None:
    if len(split) == 1:
        return None
    # megatron reads a flat layout as virtual stages in layer order (stage s on rank s mod pp),
    # the same convention as our splits.
    stages = [["decoder"] * n for n in split]
    stages[0].insert(0, "embedding")
    stages[-1].append("loss")
    return PipelineParallelLayerLayout(stages, pp)


@dataclass
class Engine:
    spec: EngineSpec
    depth: int
    split: tuple[int, ...]
    config: GrowTransformerConfig
    model: list[DistributedDataParallel]
    optimizer: object

    @property
    def chunks(self) -> list:
        """This rank's GPTModel chunks (one per virtual stage it runs), unwrapped from DDP."""
        return [m.module for m in self.model]

    def local_stages(self) -> list[int]:
        """The (virtual) stage of each local chunk, in chunk order."""
        rank = parallel_state.get_pipeline_model_parallel_rank()
        return [c * self.spec.pp + rank for c in range(len(self.model))]

    def layers_by_position(self) -> dict[int, torch.nn.Module]:
        """This rank's transformer layers keyed by global position (0-based)."""
        first = offsets(self.split)
        return {
            first[stage] + i: layer
            for stage, chunk in zip(self.local_stages(), self.chunks)
            for i, layer in enumerate(chunk.decoder.layers)
        }

    def local_layers(self) -> list[torch.nn.Module]:
        """This rank's transformer layers in layer order."""
        return [layer for _, layer in sorted(self.layers_by_position().items())]

    def named_parameters(self):
        """(name, param) over the local chunks; with several chunks the names carry `chunkN.`."""
        for c, chunk in enumerate(self.chunks):
            prefix = f"chunk{c}." if len(self.model) > 1 else ""
            for name, p in chunk.named_parameters():
                yield prefix + name, p


def build_engine(spec: EngineSpec, depth: int, init_weights: bool = True) -> Engine:
    """Model chunk, DDP and distributed optimizer at `depth`; init_weights=False leaves the
    weights undrawn (the caller overwrites every one: growth, checkpoint load)."""
    split = spec.split_for(depth)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    config = make_transformer_config(
        spec.model,
        num_layers=depth,
        params_dtype=torch.bfloat16 if spec.bf16 else torch.float32,
        bf16=spec.bf16,
        tensor_parallel=spec.tp,
        pipeline_parallel=spec.pp,
        pipeline_layout=_pipeline_layout(split, spec.pp),
        use_kernels=spec.use_kernels,
        seed=spec.seed,
        init_weights=init_weights,
        fp8=spec.fp8,
        fp8_emulate=spec.fp8_emulate,
        compile=spec.compile,
        kernels=spec.kernels if spec.use_kernels else (),
        **spec.scale.transformer_options(),
    )
    sc = spec.scale
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=sc.overlap_grad_reduce,
        overlap_param_gather=sc.overlap_param_gather,
        align_param_gather=sc.align_param_gather,
        bucket_size=sc.bucket_size,
        use_distributed_optimizer=True,
        average_in_collective=True,
    )
    model = []
    for c in range(spec.vpp):
        chunk = build_model_chunk(
            config,
            spec.model,
            spec.vocab_size,
            num_local_layers=split[c * spec.pp + pp_rank],
            vp_stage=c if spec.vpp > 1 else None,
        )
        if spec.device.is_gpu:
            chunk.cuda(torch.cuda.current_device())
        # As megatron's own training does: later chunks in one bucket each, so that their
        # grad reduction order cannot interleave with the first chunk's buckets.
        model.append(GrowDDP(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=c > 0))
    o = spec.optim
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_eps=o.eps,
        clip_grad=o.clip_grad,
        bf16=spec.bf16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=True,
        # A constant scale of 1 changes no gradient bit but turns on megatron's own check: a step
        # whose gradients hold an inf/NaN on any rank is skipped (weights, main copies, AdamW
        # moments and step untouched) and reported by step() as not successful.
        loss_scale=1.0,
    )
    optimizer = get_megatron_optimizer(opt_config, model)
    _fused_torch_adam(optimizer)
    _set_schedule_hooks(config, model, sc)
    return Engine(spec, depth, split, config, model, optimizer)


class GrowDDP(DistributedDataParallel):
    """megatron's DDP without the collectives of a data-parallel group of one rank.

    With the distributed optimizer, a step reduce-scatters the gradient buffer and all-gathers
    the parameter buffer over the data-parallel group even when that group is this rank alone:
    each is then a copy of the whole buffer onto itself (through gloo on CPU, 350 MB at the 360M
    widths, with an average that divides by 1). Alone, the gradients are already the reduced
    ones (megatron's scaling factor is 1) and the optimizer's shard is the whole parameter, so
    skipping both changes no bit. With overlap on, the grad hooks already started the (async)
    reduce, which finish_grad_sync must still wait for, so only the synchronous paths are skipped."""

    def _alone(self) -> bool:
        return (
            parallel_state.get_data_parallel_world_size(with_context_parallel=True) == 1
            and self.ddp_config.num_distributed_optimizer_instances == 1
        )

    def finish_grad_sync(self, force_all_reduce: bool | None = False):
        if self._alone() and not self.ddp_config.overlap_grad_reduce:
            return
        super().finish_grad_sync(force_all_reduce=force_all_reduce)

    def start_param_sync(self, *unused, force_sync: bool = False, force_dispatch: bool = False):
        if self._alone() and not self.ddp_config.overlap_param_gather:
            return
        super().start_param_sync(*unused, force_sync=force_sync, force_dispatch=force_dispatch)


def _fused_torch_adam(optimizer) -> None:
    """Run torch's AdamW (megatron's choice without TransformerEngine or apex, so always on CPU)
    as its fused kernel: one pass over each parameter's state instead of a dozen elementwise ops
    per tensor (torch picks the per-tensor loop by default on CPU). Same update formula and the
    same state tensors, so checkpoints and growth are unaffected."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in inner:
        torch_opt = getattr(opt, "optimizer", None)
        if isinstance(torch_opt, torch.optim.Adam) and not torch_opt.state:
            for group in torch_opt.param_groups:
                group["foreach"], group["fused"] = False, True
            torch_opt._step_supports_amp_scaling = True


def _set_schedule_hooks(config: GrowTransformerConfig, model: list[DistributedDataParallel], sc: ScaleOptions) -> None:
    """What megatron's schedules call on the DDP chunks (as Megatron-LM's training sets them):
    no_sync around all but the last micro-batch, the aligned grad reduce and param gather of a
    pipeline, and the end-of-step grad finalize (TP norm grads, tied embedding, DP reduce wait)."""

    def one_or_list(fns):
        return fns[0] if len(fns) == 1 else fns

    config.no_sync_func = one_or_list([m.no_sync for m in model])
    if sc.overlap_grad_reduce and sc.align_grad_reduce:
        config.grad_sync_func = one_or_list([m.start_grad_sync for m in model])
    if sc.overlap_param_gather and sc.align_param_gather:
        config.param_sync_func = one_or_list([m.start_param_sync for m in model])
    config.finalize_model_grads_func = finalize_model_grads


def sync_params(engine: Engine) -> None:
    """Make every rank's model weights current. With parallel.overlap_param_gather the
    distributed optimizer's step leaves the other DP ranks' ranges of the weights to an
    all-gather that the next forward's pre-hooks start; anything that reads the weights
    outside a forward (a checkpoint save, a test) calls this first; a growth reads the optimizer's
    ranges, which are current. A no-op without overlap_param_gather."""
    if engine.spec.scale.overlap_param_gather:
        for m in engine.model:
            m.start_param_sync(force_sync=True)


def relearn_grad_ready(engine: Engine) -> None:
    """After the model's use of its parameters changed (a loop applied to a built engine, so a
    looped layer's gradients arrive several times per backward): with overlap_grad_reduce, DDP
    starts a bucket's reduce once each of its params reported as many gradients as it counted in
    the engine's first step, so it would start before the second use's gradients arrived. This
    makes the next step count again, as megatron's first step does (its reduce then waits for
    the end of backward)."""
    for m in engine.model:
        for group in m.bucket_groups + m.expert_parallel_bucket_groups:
            group.is_first_batch = True
            group.golden_per_param_grad_ready_counts = {}


def destroy_engine(engine: Engine) -> None:
    """Drop every reference the engine holds so that its memory can be freed (growth).

    DDP's grad hooks close over the DDP object and its parameters only, so once nothing
    outside points at the model, optimizer or config callbacks, the whole old depth is garbage.
    """
    engine.model.clear()
    engine.optimizer = None
    engine.config.no_sync_func = None
    engine.config.grad_sync_func = engine.config.param_sync_func = None
    engine.config.finalize_model_grads_func = None
    gc.collect()
    engine.spec.device.empty_cache()


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])

    def loss_func(output_tensor):  # output_tensor: [b, s] per-token loss
        mask = batch["loss_mask"].float()
        total = (output_tensor.float() * mask).sum()
        n = mask.sum().to(torch.int)
        return total, n, {"lm loss": torch.stack([total.detach(), mask.sum()])}

    return output, loss_func


def _to_device(mb: dict, device: Device) -> dict:
    if device.is_gpu:
        return {k: v.cuda(non_blocking=True) for k, v in mb.items()}
    return mb


def run_microbatches(engine: Engine, microbatches: list[dict], forward_only: bool) -> torch.Tensor:
    """Forward (and backward) over the micro-batches; returns the token-mean loss on every rank."""
    if not forward_only:
        for m in engine.model:
            m.zero_grad_buffer()
        engine.optimizer.zero_grad()
    seq = microbatches[0]["tokens"].shape[1]
    micro_batch_size = microbatches[0]["tokens"].shape[0]
    batches = [_to_device(m, engine.spec.device) for m in microbatches]
    # The interleaved schedule reads one iterator per chunk, each over every micro-batch.
    data = iter(batches) if len(engine.model) == 1 else [iter(batches) for _ in engine.model]
    out = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=data,
        model=engine.model,
        num_microbatches=len(microbatches),
        seq_length=seq,
        micro_batch_size=micro_batch_size,
        decoder_seq_length=seq,
        forward_only=forward_only,
    )
    # Sum of (loss, tokens) over micro-batches, known on the last stage only: sum over the
    # pipeline group (zeros elsewhere), then over data-parallel replicas.
    acc = torch.zeros(2, dtype=torch.float64, device=engine.spec.device.type)
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


def train_step(
    engine: Engine, microbatches: list[dict], lr: float, before_update: Callable[[Engine], None] | None = None
) -> dict:
    """One optimizer step; returns loss, grad norm (None when skipped) and whether the update was
    applied. A step with a non-finite loss or non-finite gradients is skipped: the optimizer state
    is left exactly as it was. `before_update` runs between backward and the update (fault tests)."""
    loss = float(run_microbatches(engine, microbatches, forward_only=False))
    if before_update is not None:
        before_update(engine)
    set_lr(engine, lr)
    # The loss is reduced over PP and DP and equal over TP, so every rank takes the same branch.
    if not math.isfinite(loss):
        return {"loss": loss, "grad_norm": None, "update_ok": False, "lr": lr}
    ok, grad_norm = optimizer_step(engine.optimizer)
    return {
        "loss": loss,
        "grad_norm": float(grad_norm) if ok and grad_norm is not None else None,
        "update_ok": bool(ok),
        "lr": lr,
    }


@torch.no_grad()
def optimizer_step(optimizer) -> tuple[bool, float | None]:
    """megatron's ChainedOptimizer.step() (prepare the main grads, skip the step on an inf/NaN,
    total grad norm, clip, update), with the clip applied in place in one foreach call.

    Without apex or TransformerEngine (always on CPU) megatron clips through its local
    multi_tensor_scale, which writes `grad * coeff` to a new tensor and copies it back for every
    gradient: two passes and a fresh allocation the size of the model each step (docs/benchmarks.md,
    "One device"). The arithmetic is the same (the same norm, the same fp32
    coefficient max_norm / (norm + 1e-6), applied only when below 1), so the update is bit-identical.
    Returns (whether the update was applied, the grad norm before clipping)."""
    if optimizer.prepare_grads():
        return False, None
    grad_norm = optimizer.get_grad_norm()
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(opt, "is_stub_optimizer", False) or opt.config.clip_grad <= 0.0:
            continue
        coeff = opt.config.clip_grad / (grad_norm + 1.0e-6)
        if coeff >= 1.0:
            continue
        decoupled = opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8  # grads kept beside .grad
        grads = [g for p in opt.get_parameters() if (g := p.decoupled_grad if decoupled else p.grad) is not None]
        if grads:
            torch._foreach_mul_(grads, coeff)
    return optimizer.step_with_ready_grads(), grad_norm


def poison_gradients(engine: Engine) -> None:
    """Fault injection: make one gradient element NaN on every rank (what an overflow does)."""
    with torch.no_grad():
        for m in engine.model:
            for p in m.module.parameters():
                p.main_grad.view(-1)[0] = float("nan")
                return


@torch.no_grad()
def eval_loss(engine: Engine, microbatches: Iterable[dict]) -> float:
    for m in engine.model:
        m.eval()
    try:
        return float(run_microbatches(engine, list(microbatches), forward_only=True))
    finally:
        for m in engine.model:
            m.train()
