"""Growth, optimisation, parallelism, checkpoint and logging configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from grow_megatron.config.base import ConfigError, check

OPERATORS = ("midas", "lidas", "top", "bottom")
"""The growth operators' names; growth/operators.py maps each to its function (and checks it
has one for every name here)."""

RECOMPUTE_MODULES = ("core_attn", "mlp")
"""Submodules train.recompute=selective may recompute: megatron's recompute_modules that exist in
our dense layer ("layernorm" is left out: megatron's output-discarding checkpoint behind it needs
Transformer Engine)."""

MAX_ALPHA = 10.0
"""Largest PROP-alpha exponent accepted. At alpha = 10 stage 1 already gets under 2e-5 of the
growth steps with 3 stages (1 / (1 + 2^10 + 3^10)); larger exponents only starve the early
stages further, while the exact rational weights i^alpha grow without bound (alpha = 1e300
would never finish computing)."""


@dataclass
class GrowthConfig:
    """How depth grows (docs/method.md §3, §4). operator: none trains the static model at model.num_layers."""

    operator: Literal["none", "midas", "lidas", "top", "bottom"] = "none"
    """Growth operator; none = static training."""
    block_size: int = 4
    """b: layers added per growth; training starts at b layers."""
    function_preserving: bool = False
    """Zero the copies' output projections so that a growth leaves the function unchanged."""
    alpha: float = 1.0
    """PROP-alpha exponent: stage i trains i^alpha / sum_j j^alpha of grow_steps; 0 to 10 (beyond
    10 the early stages get next to nothing). Every stage must get at least one step."""
    grow_steps: int | None = None
    """Steps until the final depth is reached (paper: 170k of 200k). Default: train.steps minus
    optim.decay_steps, i.e. growth ends where the LR decay starts."""
    host_staging: Literal["auto", "on", "off"] = "auto"
    """Stage the old model's weights and optimizer state through host memory during a growth,
    freeing it before the grown one is built: device peak max(old, new) instead of old + new,
    for a few seconds of copying. auto: only on a GPU that could not hold both."""

    @property
    def enabled(self) -> bool:
        return self.operator != "none"

    def validate(self, num_layers: int, total_steps: int, path: str = "growth") -> None:
        if not self.enabled:
            return
        check(
            self.operator in OPERATORS,
            f"{path}.operator",
            self.operator,
            f"must be none or one of {', '.join(OPERATORS)}",
        )
        check(self.block_size > 0, f"{path}.block_size", self.block_size, "must be a positive integer")
        check(
            num_layers % self.block_size == 0,
            f"{path}.block_size",
            self.block_size,
            f"must divide model.num_layers ({num_layers}) so that growth ends at the final depth",
        )
        check(
            num_layers // self.block_size >= 2,
            f"{path}.block_size",
            self.block_size,
            f"gives a single stage for model.num_layers={num_layers}: nothing to grow (use operator: none)",
        )
        check(
            0 <= self.alpha <= MAX_ALPHA,
            f"{path}.alpha",
            self.alpha,
            f"must be in [0, {MAX_ALPHA:g}] (PROP-alpha; 1 is the paper's PROP-1)",
        )
        if self.grow_steps is not None:
            check(
                0 < self.grow_steps <= total_steps,
                f"{path}.grow_steps",
                self.grow_steps,
                f"must be in 1..train.steps ({total_steps})",
            )


@dataclass
class OptimConfig:
    """AdamW with a warmup-stable-decay schedule (docs/method.md §2)."""

    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """LR at the very end of the decay."""
    warmup_steps: int = 20
    """Linear warmup to the peak over these steps (paper: 2000 of 200k)."""
    decay_steps: int = 40
    """Length of the final decay phase; the LR is constant between warmup and decay (paper: 30k of 200k)."""
    decay_style: Literal["1-sqrt", "linear", "cosine"] = "1-sqrt"
    """Shape of the final decay: 1-sqrt is lr = peak * (1 - sqrt(progress))."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to norm gains)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    on_extend: Literal["continue", "constant", "rewarmup"] = "continue"
    """LR schedule when a run resumes with a train.steps other than the one it was trained with
    (training a finished or offline-grown run further): continue (default) = a run still before
    its decay decays later, as a run of the new length would; one already in (or past) its decay
    goes on decaying from the LR it reached, stretched to reach min_lr at the new train.steps.
    constant = keep the last LR until the end. rewarmup = linear warmup from the last LR to
    rewarmup_lr over rewarmup_steps, constant, then the usual decay over the last decay_steps.
    Training prints which applies."""
    rewarmup_steps: int | None = None
    """Length of the re-warmup of on_extend=rewarmup; empty: warmup_steps."""
    rewarmup_lr: float | None = None
    """Peak LR of the re-warmup of on_extend=rewarmup; empty: lr."""

    def validate(self, total_steps: int, path: str = "optim") -> None:
        check(self.lr > 0, f"{path}.lr", self.lr, "must be > 0")
        check(0 <= self.min_lr <= self.lr, f"{path}.min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        check(self.warmup_steps >= 0, f"{path}.warmup_steps", self.warmup_steps, "must be >= 0")
        check(self.decay_steps >= 0, f"{path}.decay_steps", self.decay_steps, "must be >= 0")
        check(
            self.warmup_steps + self.decay_steps <= total_steps,
            f"{path}.decay_steps",
            self.decay_steps,
            f"warmup_steps ({self.warmup_steps}) + decay_steps must fit in train.steps ({total_steps})",
        )
        check(0 <= self.beta1 < 1, f"{path}.beta1", self.beta1, "must be in [0, 1)")
        check(0 <= self.beta2 < 1, f"{path}.beta2", self.beta2, "must be in [0, 1)")
        check(self.weight_decay >= 0, f"{path}.weight_decay", self.weight_decay, "must be >= 0")
        check(self.clip_grad >= 0, f"{path}.clip_grad", self.clip_grad, "must be >= 0 (0 disables clipping)")
        check(
            self.rewarmup_steps is None or self.rewarmup_steps >= 0,
            f"{path}.rewarmup_steps",
            self.rewarmup_steps,
            "must be >= 0 (or empty for warmup_steps)",
        )
        check(
            self.rewarmup_lr is None or self.rewarmup_lr > 0,
            f"{path}.rewarmup_lr",
            self.rewarmup_lr,
            "must be > 0 (or empty for lr)",
        )


@dataclass
class TrainConfig:
    """The training loop."""

    steps: int = 200
    """Total optimizer steps."""
    global_batch_size: int = 16
    """Sequences per optimizer step, over all data-parallel ranks."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one rank; the rest is gradient accumulation."""
    seed: int = 1234
    """Seed for weights and data order."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto = bf16 mixed precision on GPU, fp32 on CPU."""
    eval_interval: int = 50
    """Held-out loss every this many steps (0 disables)."""
    eval_batches: int = 4
    """Micro-batches of held-out data per evaluation."""
    log_interval: int = 1
    """Metrics line every this many steps."""
    max_skipped_steps: int = 5
    """A step whose loss or gradients are not finite (inf/NaN on any rank) is skipped: no update to
    weights or AdamW state, counted in metrics.jsonl. This many skipped steps in a row stop the run
    (before any checkpoint of a diverged state is written), naming the last good checkpoint."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recompute (megatron's recompute_granularity): none keeps every activation for
    backward; selective recomputes the submodules in recompute_modules (default the core
    attention: RoPE'd q/k, the GQA-repeated k/v and the attention output are not kept); full
    keeps only each recomputed layer's input and runs its forward again in backward (about one
    more forward pass of compute for the smallest activation memory). Layers a growth adds get
    the same setting (the engine is rebuilt from it at every depth)."""
    recompute_method: Literal["uniform", "block"] = "uniform"
    """recompute=full only (megatron's recompute_method): uniform = every layer, in groups of
    recompute_num_layers layers whose inputs are kept; block = only the first recompute_num_layers
    layers of each pipeline stage (the rest keep their activations)."""
    recompute_num_layers: int = 1
    """recompute=full only: layers per recomputed group (uniform; must divide the layers of every
    pipeline stage at every depth of the growth plan) or recomputed layers per stage (block)."""
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])
    """recompute=selective only: which submodules are recomputed: core_attn (megatron's default)
    and/or mlp."""

    def validate(self, dp_size: int = 1, path: str = "train") -> None:
        check(self.steps > 0, f"{path}.steps", self.steps, "must be a positive integer")
        check(
            0 <= self.seed < 2**32,
            f"{path}.seed",
            self.seed,
            "must be in 0..2**32-1 (numpy's and megatron's seeds are unsigned 32-bit)",
        )
        check(self.max_skipped_steps >= 1, f"{path}.max_skipped_steps", self.max_skipped_steps, "must be >= 1")
        check(self.micro_batch_size > 0, f"{path}.micro_batch_size", self.micro_batch_size, "must be positive")
        check(self.global_batch_size > 0, f"{path}.global_batch_size", self.global_batch_size, "must be positive")
        check(
            self.global_batch_size % (self.micro_batch_size * dp_size) == 0,
            f"{path}.global_batch_size",
            self.global_batch_size,
            f"must be a multiple of micro_batch_size x data-parallel size ({self.micro_batch_size} x {dp_size})",
        )
        check(self.eval_interval >= 0, f"{path}.eval_interval", self.eval_interval, "must be >= 0")
        check(
            self.eval_batches > 0 or not self.eval_interval,
            f"{path}.eval_batches",
            self.eval_batches,
            "must be positive while evaluation is on (or set train.eval_interval=0)",
        )
        check(self.log_interval > 0, f"{path}.log_interval", self.log_interval, "must be positive")
        check(
            self.recompute_num_layers >= 1,
            f"{path}.recompute_num_layers",
            self.recompute_num_layers,
            "must be a positive integer",
        )
        bad = [m for m in self.recompute_modules if m not in RECOMPUTE_MODULES]
        check(
            bool(self.recompute_modules) and not bad,
            f"{path}.recompute_modules",
            self.recompute_modules,
            f"must list one or more of {', '.join(RECOMPUTE_MODULES)}",
        )


@dataclass
class ParallelConfig:
    """How ranks are split; data parallelism takes what is left of the world size."""

    tensor_parallel: int = 1
    """TP size: splits each layer's matrices over ranks."""
    pipeline_parallel: int = 1
    """PP size: splits the layers into consecutive stages."""
    virtual_stages: int = 1
    """Model chunks per pipeline rank (megatron's interleaved 1F1B schedule, virtual pipeline
    parallelism): the layers are cut into pipeline_parallel x virtual_stages consecutive virtual
    stages, virtual stage s running on pipeline rank s mod pipeline_parallel. Shrinks the pipeline
    bubble by this factor at the cost of more point-to-point traffic. Needs pipeline_parallel > 1,
    at least one layer per virtual stage at the initial depth, and the micro-batches of a step
    (and train.eval_batches) a multiple of pipeline_parallel."""
    pipeline_split: list[int] | None = None
    """Layers per pipeline stage at the final depth, in layer order (pipeline_parallel x
    virtual_stages entries); default balanced (sizes differ by at most one)."""
    overlap_grad_reduce: Literal["auto", "on", "off"] = "auto"
    """Reduce-scatter each bucket of data-parallel gradients as soon as the backward pass has
    produced them (megatron DDP's backward hooks), overlapping the network with the rest of the
    backward pass instead of waiting for its end. auto: on where a GPU runs the job; off on CPU,
    where gloo's background collectives compete with the compute for the same cores and one
    bucket keeps CPU runs bit-identical to earlier releases."""
    overlap_param_gather: Literal["auto", "on", "off"] = "auto"
    """Distributed optimizer: all-gather the updated weights bucket by bucket during the next
    forward pass (forward pre-hooks wait for each bucket just before its first use) instead of
    right after the update. Needs overlap_grad_reduce. auto: the same as overlap_grad_reduce."""
    bucket_size: int | None = None
    """Parameters per gradient bucket when overlapping: smaller buckets start communicating earlier
    but pay more per-call latency. Empty: megatron's max(40M, 1M x data-parallel size). Pipeline
    stages after the first, and model chunks after the first, use one bucket (their reduce is off
    the critical path), as megatron does."""
    align_grad_reduce: bool = True
    """Pipeline parallelism with overlap: start a model chunk's gradient reduce when its last
    micro-batch's backward ends, from the schedule (megatron's grad_sync_func), so every stage
    launches its reduce at the same point; false: when the bucket's last gradient arrives."""
    align_param_gather: bool = True
    """Pipeline parallelism with overlap_param_gather: every stage starts its first all-gather
    together from the schedule (megatron's param_sync_func)."""
    overlap_p2p_comm: Literal["auto", "on", "off"] = "auto"
    """Interleaved schedule (virtual_stages > 1): the activations sent between pipeline stages
    travel asynchronously while the next micro-batch computes. auto: on where a GPU runs an
    interleaved pipeline."""
    sequence_parallel: Literal["auto", "on", "off"] = "auto"
    """With tensor_parallel > 1: each TP rank keeps only seq_length / TP tokens of the norms,
    residuals and dropout ([s/TP, b, h] instead of [s, b, h]), and TP's all-reduces become
    reduce-scatter + all-gather (same bytes). Needs model.seq_length divisible by
    tensor_parallel. auto: on where a GPU runs a TP > 1 job and the sequence divides."""

    @property
    def num_virtual_stages(self) -> int:
        """Pipeline stages in layer order: pipeline_parallel x virtual_stages."""
        return self.pipeline_parallel * self.virtual_stages

    def validate(
        self,
        world_size: int,
        num_layers: int,
        heads: int,
        kv_heads: int,
        path: str = "parallel",
        initial_layers: int | None = None,
        microbatches: tuple[tuple[str, object, int, str], ...] = (),
        seq_length: int | None = None,
    ) -> None:
        """initial_layers: depth at step 0 (the growth's first stage); microbatches: (field, value,
        micro-batch count, how the count follows) for every micro-batch count the pipeline schedule
        will see (training step, evaluation); seq_length: model.seq_length (sequence parallelism)."""
        tp, pp, v = self.tensor_parallel, self.pipeline_parallel, self.virtual_stages
        check(tp > 0, f"{path}.tensor_parallel", tp, "must be positive")
        check(pp > 0, f"{path}.pipeline_parallel", pp, "must be positive")
        check(v > 0, f"{path}.virtual_stages", v, "must be positive")
        check(
            v == 1 or pp > 1,
            f"{path}.virtual_stages",
            v,
            "needs pipeline_parallel > 1 (virtual stages interleave layers over pipeline ranks)",
        )
        check(
            world_size % (tp * pp) == 0,
            f"{path}.tensor_parallel",
            tp,
            f"tensor_parallel x pipeline_parallel ({tp} x {pp}) must divide the world size ({world_size})",
        )
        check(
            heads % tp == 0 and kv_heads % tp == 0,
            f"{path}.tensor_parallel",
            tp,
            f"must divide the attention heads ({heads}) and key/value heads ({kv_heads})",
        )
        self._validate_scale(path, seq_length)
        n = self.num_virtual_stages
        first = num_layers if initial_layers is None else initial_layers
        what = "pipeline stages" if v == 1 else f"virtual stages ({pp} ranks x {v})"
        field = f"{path}.pipeline_parallel" if v == 1 else f"{path}.virtual_stages"
        check(
            first >= n,
            field,
            pp if v == 1 else v,
            f"every one of the {n} {what} needs at least one layer, but the model "
            + (
                f"starts with growth.block_size={first} layers" if initial_layers is not None else f"has {first} layers"
            ),
        )
        if self.pipeline_split is not None:
            check(
                len(self.pipeline_split) == n
                and sum(self.pipeline_split) == num_layers
                and min(self.pipeline_split) > 0,
                f"{path}.pipeline_split",
                self.pipeline_split,
                f"must list {n} positive layer counts summing to model.num_layers ({num_layers})",
            )
        if v > 1:
            # megatron's interleaved schedule runs micro-batches in groups of pipeline_parallel
            # per virtual stage; a ragged last group would stall the pipeline, so it refuses.
            for name, value, count, how in microbatches:
                check(
                    count % pp == 0,
                    name,
                    value,
                    f"gives {count} micro-batch(es) per pipeline pass ({how}); the interleaved schedule "
                    f"(parallel.virtual_stages={v}) needs a multiple of pipeline_parallel ({pp})",
                )

    def _validate_scale(self, path: str, seq_length: int | None) -> None:
        tp = self.tensor_parallel
        check(
            self.bucket_size is None or self.bucket_size > 0,
            f"{path}.bucket_size",
            self.bucket_size,
            "must be a positive number of parameters (or empty for megatron's default)",
        )
        check(
            self.overlap_param_gather != "on" or self.overlap_grad_reduce == "on",
            f"{path}.overlap_param_gather",
            self.overlap_param_gather,
            f"needs {path}.overlap_grad_reduce=on (it is {self.overlap_grad_reduce})",
        )
        check(
            self.overlap_p2p_comm != "on" or self.virtual_stages > 1,
            f"{path}.overlap_p2p_comm",
            self.overlap_p2p_comm,
            f"overlaps the interleaved schedule's sends: needs {path}.virtual_stages > 1",
        )
        if self.sequence_parallel == "on":
            check(
                tp > 1,
                f"{path}.sequence_parallel",
                "on",
                f"splits the sequence over tensor-parallel ranks: needs {path}.tensor_parallel > 1",
            )
            check(
                seq_length is None or seq_length % tp == 0,
                f"{path}.sequence_parallel",
                "on",
                f"needs model.seq_length ({seq_length}) divisible by {path}.tensor_parallel ({tp})",
            )

    def resolved_scale(self, device: str, seq_length: int) -> dict:
        """The on/off of each `auto` here for a job on `device` ("cuda" or "cpu")."""
        gpu = device == "cuda"

        def on(value: str, auto: bool) -> bool:
            return value == "on" or (value == "auto" and auto)

        grad = on(self.overlap_grad_reduce, gpu)
        return {
            "overlap_grad_reduce": grad,
            "overlap_param_gather": on(self.overlap_param_gather, grad),
            "overlap_p2p_comm": on(self.overlap_p2p_comm, gpu and self.virtual_stages > 1),
            "sequence_parallel": on(
                self.sequence_parallel, gpu and self.tensor_parallel > 1 and seq_length % self.tensor_parallel == 0
            ),
        }


@dataclass
class CheckpointConfig:
    """Checkpointing (megatron dist_checkpointing, atomic)."""

    interval: int = 0
    """Save every this many steps (0: only at the end and at growths if save_at_growth)."""
    save_at_growth: bool = True
    """Also save right before each growth."""
    keep_last: int = 2
    """Keep this many periodic checkpoints (growth checkpoints are kept too)."""
    resume: Literal["auto", "never", "fresh"] = "auto"
    """auto: continue from the newest complete checkpoint in the run dir if there is one.
    never: start from scratch; refused if run_dir already holds a run. fresh: start from
    scratch, first moving an earlier run's outputs to run_dir/archive-<UTC time>/."""
    async_save: Literal["on", "off"] = "off"
    """on: training continues while a checkpoint is written from a host copy of this rank's
    share (megatron's async writer in a forked process); it becomes `latest` only once every
    rank finished, at most one save is in flight (the next save waits for it), and the final
    save and a stop wait for it. Costs host memory for the copy of what the rank writes."""

    def validate(self, path: str = "checkpoint") -> None:
        check(self.interval >= 0, f"{path}.interval", self.interval, "must be >= 0")
        check(self.keep_last >= 1, f"{path}.keep_last", self.keep_last, "must be >= 1")


@dataclass
class LoggingConfig:
    """Progress bar, JSONL metrics and TensorBoard."""

    progress: bool = True
    """Progress on rank 0: a tqdm bar on a terminal; when stderr is not a terminal (a log file,
    a batch job), a plain line every print_interval steps instead."""
    print_interval: int | None = None
    """Steps between the plain progress lines of a non-terminal log; empty: about 20 lines per run."""
    tensorboard: bool = True
    """Write TensorBoard scalars to RUN_DIR/tb."""
    wandb: bool = False
    """Also log the metrics and growth events to Weights & Biases (the `wandb` library; WANDB_MODE=
    offline writes them under WANDB_DIR for a later `wandb sync`). The run id is kept in
    RUN_DIR/wandb_id, so a resumed run continues the same W&B run."""
    wandb_project: str = "grow_megatron"
    """W&B project."""
    wandb_name: str | None = None
    """W&B run name; empty: the run's name."""

    def validate(self, path: str = "logging") -> None:
        check(
            self.print_interval is None or self.print_interval > 0,
            f"{path}.print_interval",
            self.print_interval,
            "must be positive (or empty for about 20 lines per run)",
        )
        check(bool(self.wandb_project.strip()), f"{path}.wandb_project", self.wandb_project, "may not be empty")
        if self.wandb:
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ConfigError(
                    f"{path}.wandb", True, "needs the wandb library: pip install wandb, or set logging.wandb=false"
                ) from None
