"""The measurements of `grow-megatron bench`: the engine (static, per stage, a scaled grown vs
static run) and the Hugging Face baseline, all timed the same way.

Timing: every timed region is bracketed by torch.cuda.synchronize() (no-ops on CPU) and a
host clock; each figure is the median over `steps_per_stage` steps after `warmup` untimed
steps. Tokens are random ids drawn once and kept on the device, as in the reference
measurements (docs/benchmarks.md, H100): the data pipeline is not what is measured here.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from grow_megatron.bench.config import DRY_RUN_LIMITS, DRY_RUN_MODEL, BenchConfig
from grow_megatron.bench.profile import safe_profile
from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import RunConfig, load_run_config
from grow_megatron.engine.build import EngineSpec, build_engine, destroy_engine, train_step
from grow_megatron.engine.grow import grow, needs_host_staging
from grow_megatron.engine.resolve import planned_layout, resolve_run
from grow_megatron.growth import flops as F
from grow_megatron.growth.operators import get_operator
from grow_megatron.growth.schedule import GrowthPlan, make_plan
from grow_megatron.model.looping import apply_loop_to_engine

# ----------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Setup:
    """The resolved shapes and schedules every part of the benchmark uses."""

    cfg: RunConfig
    """The run config with the benchmark's sequence length, vocabulary and seed applied."""
    batch: int
    """Sequences per micro-batch per data-parallel rank."""
    microbatches: int
    shape: ModelConfig
    """Final-depth shape for the FLOPs formula (seq = the benchmark's sequence length)."""
    spec: EngineSpec
    """The engine as training would build it for this config (engine.resolve.resolve_run)."""
    plan: GrowthPlan | None
    """The config's growth plan (None for a static config): gives the stage depths."""
    scaled_plan: GrowthPlan | None
    """The same PROP schedule compressed to bench.total_steps."""
    scaled_grow_steps: int

    @property
    def seq(self) -> int:
        return self.spec.model.seq_length

    @property
    def vocab(self) -> int:
        return self.spec.vocab_size

    @property
    def bf16(self) -> bool:
        return self.spec.bf16

    @property
    def use_kernels(self) -> bool:
        return self.spec.use_kernels

    def tokens_per_step(self, dp: int) -> int:
        return self.batch * self.microbatches * self.seq * dp

    @property
    def depths(self) -> list[int]:
        if self.plan is None:
            return [self.shape.num_layers]
        return [self.plan.initial_depth] + [g.new_depth for g in self.plan.growths]


def _load(bc: BenchConfig, extra: list[str], world_size: int) -> RunConfig:
    return load_run_config(bc.config, list(bc.overrides) + extra, world_size=world_size)


def resolve(bc: BenchConfig, world_size: int = 1, on_gpu: bool = False) -> tuple[BenchConfig, Setup]:
    """Apply the dry-run limits, read the run config and derive shapes and schedules."""
    extra: list[str] = []
    if bc.dry_run:
        bc = dataclasses.replace(
            bc, hf_compile=False, **{k: min(getattr(bc, k) or v, v) for k, v in DRY_RUN_LIMITS.items()}
        )
        first = _load(bc, [], world_size)
        # Keep the growth structure (block size, operator, PROP proportions) but at most three
        # blocks deep, so that there are growths to time and every stage is quick.
        b = first.growth.block_size if first.growth.enabled else 2
        layers = min(first.model.num_layers, 3 * b) if first.growth.enabled else min(first.model.num_layers, 4)
        extra = [f"model.{k}={v}" for k, v in DRY_RUN_MODEL.items()] + [
            f"model.num_layers={layers}",
            "model.kernels='off'",
            "train.precision=fp32",
            # The data parallel batch of the config must still divide: one micro-batch of bc.batch.
            f"train.micro_batch_size={bc.batch}",
            f"train.global_batch_size={bc.batch * world_size}",
        ]
        if first.growth.enabled and first.growth.grow_steps is not None:
            extra.append(f"growth.grow_steps={max(first.grow_steps, 3)}")
    for name, v in (("seq", bc.seq), ("vocab", bc.vocab)):
        if v is not None and v < 1:
            raise ConfigError(name, v, "must be a positive integer")
    # The benchmark's own shape and seed go into the config, so that the engine is resolved
    # from it exactly as training resolves its own.
    extra += (
        ([f"model.seq_length={bc.seq}"] if bc.seq else [])
        + ([f"model.vocab_size={bc.vocab}"] if bc.vocab else [])
        + [f"train.seed={bc.seed}"]
    )
    cfg = _load(bc, extra, world_size)
    m = cfg.model
    batch = bc.batch or cfg.train.micro_batch_size
    if m.vocab_size is None:
        raise ConfigError(
            "model.vocab_size", None, "is empty in the run config (the trainer takes the tokenizer's): pass --vocab"
        )
    for name, v in (
        ("batch", batch),
        ("microbatches", bc.microbatches),
        ("steps_per_stage", bc.steps_per_stage),
        ("total_steps", bc.total_steps),
        ("profile_steps", bc.profile_steps),
    ):
        if v < 1:
            raise ConfigError(name, v, "must be a positive integer")
    if bc.warmup < 0:
        raise ConfigError("warmup", bc.warmup, "must be >= 0")
    pp, vpp = cfg.parallel.pipeline_parallel, cfg.parallel.virtual_stages
    if vpp > 1 and bc.microbatches % pp:
        raise ConfigError(
            "microbatches",
            bc.microbatches,
            f"the interleaved pipeline (parallel.virtual_stages={vpp}) needs a multiple of pipeline_parallel ({pp})",
        )
    bad = [p for p in bc.parts if p not in BenchConfig.PARTS]
    if bad:
        raise ConfigError("parts", ",".join(bad), f"must be among {', '.join(BenchConfig.PARTS)}")
    run = resolve_run(cfg, planned_layout(cfg, world_size), random_tokens=True, device="cuda" if on_gpu else "cpu")
    shape = F.flops_shape(m, vocab_size=run.vocab, seq_length=m.seq_length)

    plan = scaled = None
    scaled_grow = 0
    if cfg.growth.enabled:
        plan = run.plan
        b, k = cfg.growth.block_size, m.num_layers // cfg.growth.block_size
        # Same proportions: growth phase / whole run as in the config, each stage >= 1 step.
        scaled_grow = max(k, round(bc.total_steps * cfg.grow_steps / cfg.train.steps))
        if scaled_grow > bc.total_steps:
            raise ConfigError(
                "total_steps", bc.total_steps, f"is too short for {k} growth stages of at least one step each"
            )
        scaled = make_plan(
            m.num_layers,
            b,
            scaled_grow,
            get_operator(cfg.growth.operator, cfg.growth.function_preserving),
            cfg.growth.alpha,
        )
    return bc, Setup(cfg, batch, bc.microbatches, shape, run.spec, plan, scaled, scaled_grow)


# ----------------------------------------------------------------------------- timing helpers


def on_gpu() -> bool:
    return torch.cuda.is_available()


def _sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of fn(), device work included."""
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


def reset_peak_memory() -> None:
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    """torch.cuda.max_memory_allocated since the last reset; on CPU the process RSS now
    (an upper bound of what the measurement holds: no per-phase peak exists there)."""
    if on_gpu():
        return torch.cuda.max_memory_allocated() / 2**30
    return psutil.Process().memory_info().rss / 2**30


def free_memory() -> None:
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Rates:
    """What a throughput becomes in FLOPs terms for one model shape."""

    flops_per_token: int
    """docs/method.md §6: 6N + 12 L s d."""
    flops_per_token_causal: int
    """6N + 6 L s d (causal attention halved), the convention of the H100 reference in docs/benchmarks.md."""
    peak_flops: float | None

    @classmethod
    def of(cls, shape: ModelConfig, peak_flops: float | None) -> Rates:
        return cls(F.model_flops_per_token(shape), F.model_flops_per_token_causal(shape), peak_flops)


def summarize(step_times: list[float], tokens_per_step: int, rates: Rates, memory_gib: float) -> dict:
    """Median-based figures of one measurement."""
    med = statistics.median(step_times)
    tps = tokens_per_step / med
    out = {
        "steps_timed": len(step_times),
        "tokens_per_step": tokens_per_step,
        "step_s_median": med,
        "step_s_min": min(step_times),
        "step_s_max": max(step_times),
        "tokens_per_s": tps,
        "flops_per_token": rates.flops_per_token,
        "flops_per_token_causal": rates.flops_per_token_causal,
        "tflops": tps * rates.flops_per_token / 1e12,
        "tflops_causal": tps * rates.flops_per_token_causal / 1e12,
        "mfu": None,
        "mfu_causal": None,
        "peak_memory_gib": memory_gib,
    }
    if rates.peak_flops:
        out["mfu"] = F.mfu(tps, rates.flops_per_token, rates.peak_flops)
        out["mfu_causal"] = F.mfu(tps, rates.flops_per_token_causal, rates.peak_flops)
    return out


def random_microbatches(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[dict]:
    """n micro-batches of random ids, on the device. Every rank draws the same ids (TP ranks
    must see identical inputs; for DP replicas it does not matter for timing)."""
    gen = torch.Generator().manual_seed(seed)
    dev = "cuda" if on_gpu() else "cpu"
    out = []
    for _ in range(n):
        t = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
        mb = {
            "tokens": t[:, :-1].contiguous(),
            "labels": t[:, 1:].contiguous(),
            "loss_mask": torch.ones(batch, seq),
            "position_ids": torch.arange(seq).expand(batch, seq).contiguous(),
        }
        out.append({k: v.to(dev) for k, v in mb.items()})
    return out


# ----------------------------------------------------------------------------- engine parts


@dataclass
class EngineBench:
    """Runs the engine parts; created inside device_context() after init_distributed()."""

    bc: BenchConfig
    setup: Setup
    dp: int
    tp: int
    pp: int
    peak_flops: float | None

    def __post_init__(self) -> None:
        s = self.setup
        self.spec = s.spec
        self.batches = random_microbatches(s.microbatches, s.batch, s.seq, s.vocab, self.bc.seed)
        self.tokens_per_step = s.tokens_per_step(self.dp)
        # A constant LR: its value does not change the work done per step.
        self.lr = s.cfg.optim.lr

    def rates(self, depth: int) -> Rates:
        return Rates.of(self.setup.shape.with_layers(depth), self.peak_flops)

    def grow(self, engine, growth):
        """A growth as the training loop does it (host staging where growth.host_staging says so)."""
        return grow(engine, growth, host_staging=needs_host_staging(engine, growth, self.setup.cfg.growth.host_staging))

    def step(self, engine) -> dict:
        return train_step(engine, self.batches, self.lr)

    def measure(self, engine) -> tuple[list[float], dict]:
        """Warm-up, then the timed steps of `engine`; (step seconds, last step's output)."""
        out: dict = {}
        for _ in range(self.bc.warmup):
            out = self.step(engine)
        times = []
        for _ in range(self.bc.steps_per_stage):
            dt, out = timed(lambda: self.step(engine))
            times.append(dt)
        return times, out

    def static(self) -> dict:
        """The model at the final depth."""
        depth = self.setup.shape.num_layers
        free_memory()
        reset_peak_memory()
        build_s, engine = timed(lambda: build_engine(self.spec, depth))
        loop = self.setup.cfg.model.loop
        if loop is not None and loop.repeats > 1:
            # The final depth trains looped from loop.from_step: time that, count its unrolled depth.
            apply_loop_to_engine(engine, loop.spec)
            depth = loop.spec.unrolled_depth(depth)
        times, out = self.measure(engine)
        res = {
            "depth": depth,
            "build_s": build_s,
            **summarize(times, self.tokens_per_step, self.rates(depth), peak_memory_gib()),
            "last_loss": out.get("loss"),
        }
        if self.bc.profile:  # after the peak memory is read: the profiler's buffers are not the model's
            res["profile"] = safe_profile(
                lambda: self.step(engine), self.bc.profile_steps, _sync, on_gpu(), res["step_s_median"]
            )
        destroy_engine(engine)
        return res

    def stages(self) -> list[dict]:
        """Each stage's depth, reached by growing from the first (so grow() is exercised and timed)."""
        plan = self.setup.plan
        assert plan is not None
        free_memory()
        engine = build_engine(self.spec, plan.initial_depth)
        rows = []
        for i, depth in enumerate(self.setup.depths):
            grow_s = None
            if i:
                grow_s, engine = timed(lambda: self.grow(engine, plan.growths[i - 1]))
            free_memory()
            reset_peak_memory()
            times, out = self.measure(engine)
            rows.append(
                {
                    "stage": i + 1,
                    "depth": depth,
                    "grow_s": grow_s,
                    **summarize(times, self.tokens_per_step, self.rates(depth), peak_memory_gib()),
                    "last_loss": out.get("loss"),
                }
            )
        destroy_engine(engine)
        return rows

    def run(self, plan: GrowthPlan | None, total_steps: int) -> dict:
        """`total_steps` optimizer steps following `plan` (None: static at the final depth), growth
        included; per-step records for the plot."""
        free_memory()
        depth0 = plan.initial_depth if plan is not None else self.setup.shape.num_layers
        build_s, engine = timed(lambda: build_engine(self.spec, depth0))
        records, growths = [], []
        _sync()
        t_start = time.perf_counter()
        for step in range(total_steps):
            while plan is not None and engine.depth < plan.depth_at(step):
                g = next(g for g in plan.growths if g.old_depth == engine.depth)
                dt, engine = timed(lambda: self.grow(engine, g))
                growths.append({"step": step, "old_depth": g.old_depth, "new_depth": g.new_depth, "seconds": dt})
            dt, out = timed(lambda: self.step(engine))
            records.append(
                {
                    "step": step,
                    "depth": engine.depth,
                    "step_s": dt,
                    "tokens_per_s": self.tokens_per_step / dt,
                    "loss": out["loss"],
                }
            )
        _sync()
        wall = time.perf_counter() - t_start
        destroy_engine(engine)
        return {
            "build_s": build_s,
            "wall_s": wall,
            "train_s": sum(r["step_s"] for r in records),
            "growth_s": sum(g["seconds"] for g in growths),
            "growths": growths,
            "steps": records,
        }

    def schedule(self) -> dict:
        """The scaled PROP run, grown and static, next to the FLOPs-predicted speedup."""
        s = self.setup
        plan, total = s.scaled_plan, self.bc.total_steps
        assert plan is not None
        cmp = F.compare(s.shape, plan, total, self.tokens_per_step)
        grown = self.run(plan, total)
        static = self.run(None, total)
        predicted = cmp.ratio
        measured = static["wall_s"] / grown["wall_s"]
        measured_train_only = static["train_s"] / grown["train_s"]
        # Per stage of the grown run: the steps it trained, their time and achieved FLOP rate.
        stages = []
        for st in cmp.grown.stages:
            recs = [r for r in grown["steps"] if r["depth"] == st.depth]
            secs = sum(r["step_s"] for r in recs)
            stages.append(
                {
                    **st.to_dict(),
                    "seconds": secs,
                    "step_s_median": statistics.median(r["step_s"] for r in recs) if recs else None,
                    "tflops": st.flops / secs / 1e12 if secs else None,
                }
            )
        return {
            "total_steps": total,
            "grow_steps": s.scaled_grow_steps,
            "stage_steps": list(plan.stage_steps),
            "boundaries": list(plan.boundaries),
            "operator": s.cfg.growth.operator,
            "tokens_per_step": self.tokens_per_step,
            "flops": cmp.to_dict(),
            "predicted_speedup": predicted,
            "measured_speedup": measured,
            "measured_speedup_train_only": measured_train_only,
            "efficiency": measured / predicted,
            "growth_s": grown["growth_s"],
            "growth_fraction_of_grown_wall": grown["growth_s"] / grown["wall_s"],
            "grown": {k: v for k, v in grown.items()},
            "static": static,
            "grown_stages": stages,
            "grown_tflops": cmp.grown.flops / grown["wall_s"] / 1e12,
            "static_tflops": cmp.static.flops / static["wall_s"] / 1e12,
        }


# ----------------------------------------------------------------------------- HF baseline


def hf_measure(setup: Setup, bc: BenchConfig, compiled: bool, peak_flops: float | None) -> dict:
    """transformers' LlamaForCausalLM with the engine's shapes: SDPA attention, tied embeddings,
    fp32 parameters under bf16 autocast, AdamW (fused on GPU), clip 1.0 as the engine does."""
    try:
        # transformers: only the HF baseline needs it, and the engine parts must run without it.
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as err:  # the engine parts do not need it
        return {"skipped": f"transformers not importable: {err}"}
    m, o = setup.cfg.model, setup.cfg.optim
    gpu = on_gpu()
    dev = "cuda" if gpu else "cpu"
    # transformers >= 5 takes the RoPE base in rope_parameters, older versions as rope_theta.
    v5 = "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters
    rope = (
        {"rope_parameters": {"rope_type": "default", "rope_theta": float(m.rope_theta)}}
        if v5
        else {"rope_theta": m.rope_theta}
    )
    hf_cfg = LlamaConfig(
        vocab_size=setup.vocab,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        # With model.loop: the unrolled plain Llama, the same compute as the looped engine.
        num_hidden_layers=(m.loop.spec.unrolled_depth(m.num_layers) if m.loop is not None else m.num_layers),
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.kv_heads,
        max_position_embeddings=setup.seq,
        rms_norm_eps=m.norm_eps,
        tie_word_embeddings=True,
        initializer_range=m.init_std,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        **rope,
    )
    hf_cfg._attn_implementation = "sdpa"
    free_memory()
    reset_peak_memory()
    torch.manual_seed(bc.seed)
    with torch.device(dev):  # initialise on the device: a 1.7B init on the host takes long
        model = LlamaForCausalLM(hf_cfg)
    fwd = opt = None
    try:
        model.train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            fused=gpu and not bc.dry_run,
        )
        fwd = torch.compile(model) if compiled else model
        ids = [
            mb["tokens"] for mb in random_microbatches(setup.microbatches, setup.batch, setup.seq, setup.vocab, bc.seed)
        ]
        # bf16 autocast on GPU (as the reference measurements); a dry run on CPU stays fp32.
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=setup.bf16 and gpu)

        def step() -> float:
            total = 0.0
            for x in ids:
                with autocast:
                    loss = fwd(input_ids=x, labels=x).loss / len(ids)
                loss.backward()
                total += float(loss.detach())
            if o.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return total

        compile_s, loss = timed(step)  # the first step (compilation when compiled), reported apart
        for _ in range(max(0, bc.warmup - 1)):
            loss = step()
        times = []
        for _ in range(bc.steps_per_stage):
            dt, loss = timed(step)
            times.append(dt)
        tokens = setup.tokens_per_step(1)
        # Read back what transformers actually chose (it may fall back from a requested implementation).
        res = {
            "model": "transformers.LlamaForCausalLM",
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "compiled": compiled,
            "fused_adamw": gpu and not bc.dry_run,
            "autocast_bf16": setup.bf16 and gpu,
            "params": params,
            "first_step_s": compile_s,
            "depth": hf_cfg.num_hidden_layers,
            **summarize(
                times,
                tokens,
                Rates.of(setup.shape.with_layers(hf_cfg.num_hidden_layers), peak_flops),
                peak_memory_gib(),
            ),
            "last_loss": loss,
        }
        if bc.profile:
            res["profile"] = safe_profile(step, bc.profile_steps, _sync, gpu, res["step_s_median"])
        return res
    finally:
        # Also on a failure (out of memory, a compile error): the next part needs this memory,
        # and the frame that holds these stays alive in the traceback.
        model = fwd = opt = None  # noqa: F841
        if compiled:
            torch._dynamo.reset()
        free_memory()
