"""`grow-megatron flops` below its flags: the options, their resolution from a preset, the paper's
settings, a run config and the flags (explicit flags > run config > preset > the paper's), and
the static vs grown comparison. The counting itself is growth/flops.py's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import PRESETS, ModelConfig
from grow_megatron.config.options import cli
from grow_megatron.growth import flops as F
from grow_megatron.growth.schedule import GrowthPlan

_SHAPE_FLAGS = {  # flag -> ModelConfig field
    "layers": "num_layers",
    "hidden": "hidden_size",
    "ffn": "ffn_hidden_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_query_groups",
    "vocab": "vocab_size",
    "seq": "seq_length",
}
_SHAPE = cli(group="model shape")
_SCHEDULE = cli(group="schedule")


@dataclass
class FlopsOptions:
    """Options of `grow-megatron flops`."""

    config: str | None = field(default=None, metadata=cli(positional=True))
    """YAML run config or run directory (model shape, vocabulary, growth plan, steps, batch)"""
    preset: str | None = field(default=None, metadata=cli(choices=sorted(F.PAPER_SETTINGS)))
    """model preset (docs/method.md §1)"""
    paper: bool = False
    """the paper's Table 7 settings: 200k steps, PROP-1, b=4, growth over the first 170k steps, 2^20 (360M) /
    2^21 (1.7B) tokens per step, and its stage rounding"""
    layers: int | None = field(default=None, metadata=_SHAPE)
    """num_layers"""
    hidden: int | None = field(default=None, metadata=_SHAPE)
    """hidden_size"""
    ffn: int | None = field(default=None, metadata=_SHAPE)
    """ffn_hidden_size"""
    heads: int | None = field(default=None, metadata=_SHAPE)
    """num_attention_heads"""
    kv_heads: int | None = field(default=None, metadata=_SHAPE)
    """num_query_groups"""
    vocab: int | None = field(default=None, metadata=_SHAPE)
    """vocab_size"""
    seq: int | None = field(default=None, metadata=_SHAPE)
    """seq_length"""
    steps: int | None = field(default=None, metadata=_SCHEDULE)
    """total training steps"""
    grow_steps: int | None = field(default=None, metadata=_SCHEDULE)
    """steps until the final depth (T of docs/method.md §4)"""
    block_size: int | None = field(default=None, metadata=_SCHEDULE)
    """layers added per growth (b); also the starting depth"""
    alpha: float | None = field(default=None, metadata=_SCHEDULE)
    """PROP-alpha exponent (default 1)"""
    tokens_per_step: int | None = field(default=None, metadata=_SCHEDULE)
    """global batch in tokens"""
    global_batch: int | None = field(default=None, metadata=_SCHEDULE)
    """global batch in sequences (tokens per step = this x seq)"""
    rounding: Literal["spec", "paper"] | None = field(default=None, metadata=_SCHEDULE)
    """stage lengths: 'spec' = largest remainder, docs/method.md §4 (what the trainer runs,
    default), 'paper' = floors with the leftover steps at full depth (reproduces Table 7; default with --paper)"""
    json: str | None = field(default=None, metadata=cli(metavar="PATH"))
    """also write the result as JSON ('-' for stdout)"""


def resolve(args: FlopsOptions) -> tuple[ModelConfig, GrowthPlan | None, int, int, dict[str, Any]]:
    """(shape, plan or None, total_steps, tokens_per_step, plan parameters used) from all sources."""
    vals: dict[str, Any] = {}
    if args.preset:
        vals.update(PRESETS[args.preset])
        if args.paper:
            s = F.PAPER_SETTINGS[args.preset]
            vals.update(
                steps=s.total_steps,
                grow_steps=s.grow_steps,
                block_size=s.block_size,
                alpha=s.alpha,
                tokens_per_step=s.tokens_per_step,
            )
    elif args.paper:
        s = F.PaperSettings()
        vals.update(steps=s.total_steps, grow_steps=s.grow_steps, block_size=s.block_size, alpha=s.alpha)
    if args.config:
        # torch and megatron-core (a checkpoint's or the tokenizer's vocabulary): only for a run
        # config, so that `grow-megatron flops --preset` and `--help` stay quick.
        from grow_megatron.engine.resolve import run_flops_inputs

        from_cfg = run_flops_inputs(args.config)
        if "global_batch" in from_cfg:
            vals.pop("tokens_per_step", None)
        vals.update(from_cfg)
    for flag, name in _SHAPE_FLAGS.items():
        if getattr(args, flag) is not None:
            vals[name] = getattr(args, flag)
    for key in ("steps", "grow_steps", "block_size", "alpha", "tokens_per_step", "global_batch"):
        if getattr(args, key) is not None:
            vals[key] = getattr(args, key)
            if key == "global_batch":
                vals.pop("tokens_per_step", None)
            if key == "tokens_per_step":
                vals.pop("global_batch", None)

    missing = [f for f in _SHAPE_FLAGS.values() if f not in vals]
    if missing:
        flags = [("--" + k.replace("_", "-")) for k, f in _SHAPE_FLAGS.items() if f in missing]
        raise ConfigError(
            "model", None, f"missing {', '.join(missing)}: give --preset, a run config or {' '.join(flags)}"
        )
    for flag, name in _SHAPE_FLAGS.items():
        _positive(vals[name], "--" + flag.replace("_", "-"), name)
    try:
        shape = F.check_shape(ModelConfig(**{f: vals[f] for f in _SHAPE_FLAGS.values()}))
    except ValueError as err:
        raise ConfigError("model shape", None, str(err)) from None
    # Flags bypass the run config's validation: check them here, where the flag can be named,
    # rather than let a zero reach a division in flops.py.
    for key in ("steps", "grow_steps", "block_size", "tokens_per_step", "global_batch"):
        if key in vals:
            _positive(vals[key], "--" + key.replace("_", "-"), key)
    if "alpha" in vals and not vals["alpha"] >= 0:
        raise ConfigError("--alpha", vals["alpha"], "must be >= 0 (PROP-alpha exponent; 1 = the paper's PROP-1)")
    if "tokens_per_step" not in vals:
        if "global_batch" not in vals:
            raise ConfigError("tokens_per_step", None, "give --tokens-per-step or --global-batch (or --paper)")
        vals["tokens_per_step"] = vals["global_batch"] * shape.seq_length
    if "steps" not in vals:
        raise ConfigError("steps", None, "give --steps (or --paper, or a run config)")
    rounding = args.rounding or ("paper" if args.paper else "spec")
    plan = None
    used: dict[str, Any] = {"rounding": rounding}
    if "vocab_source" in vals and args.vocab is None:
        used["vocab"] = f"{shape.vocab_size} ({vals['vocab_source']})"
    if "loop" in vals:
        used["loop"] = vals["loop"]
    if "block_size" in vals or "grow_steps" in vals:
        b = vals.get("block_size", 4)
        grow = vals.get("grow_steps", vals["steps"])
        if grow > vals["steps"]:
            raise ConfigError(
                "--grow-steps", grow, f"must be <= the total steps ({vals['steps']}): growth has to end within the run"
            )
        alpha = vals.get("alpha", 1.0)
        try:
            plan = F.prop_plan(shape.num_layers, b, grow, alpha, rounding)
        except ValueError as err:
            raise ConfigError("block_size", b, str(err)) from None
        used.update(block_size=b, grow_steps=grow, alpha=alpha)
    return shape, plan, vals["steps"], vals["tokens_per_step"], used


def _looped(run: F.RunFlops, shape: ModelConfig, used: dict[str, Any]) -> F.RunFlops:
    """The run with the config's model.loop: steps from loop.from_step on at the unrolled depth."""
    loop = used.get("loop")
    return run if loop is None else F.with_loop(run, shape, loop["from_step"], loop["unrolled_depth"])


def _positive(value: Any, flag: str, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(flag, value, f"{field} must be a positive integer")


def compute(args: FlopsOptions) -> tuple[list[str], dict[str, Any]]:
    """(the report's paragraphs, the result as JSON-ready dict) of a `flops` request."""
    shape, plan, steps, tps, used = resolve(args)
    texts: list[str] = []
    if plan is None:
        # No growth schedule anywhere: report the static run alone rather than guess one.
        run = _looped(F.static_flops(shape, steps, tps), shape, used)
        texts.append(
            f"static run (no growth schedule given): {F.format_flops(run.flops)} "
            f"({F.model_flops_per_token(shape):,} FLOPs/token)"
            + (f"; vocab={used['vocab']}" if "vocab" in used else "")
        )
        result: dict[str, Any] = {"static": run.to_dict(), "shape": F.shape_dict(shape)}
    else:
        try:
            cmp = F.compare(shape, plan, steps, tps)
        except ValueError as err:
            raise ConfigError("growth", None, str(err)) from None
        cmp = dataclasses.replace(cmp, static=_looped(cmp.static, shape, used), grown=_looped(cmp.grown, shape, used))
        header = ", ".join(f"{k}={v}" for k, v in used.items())
        texts.append(f"model: {F.format_shape(shape)}\ntokens/step: {tps:,}; {header}\n")
        texts.append(cmp.format_table())
        result = cmp.to_dict()
        result["plan"] = used
        if args.paper and args.preset and used.get("rounding") == "paper":
            static_pf, grown_pf, ratio = F.PAPER_TABLE7[args.preset]
            texts.append(f"paper Table 7: static {static_pf:,.3f} PF, grown {grown_pf:,.3f} PF, ratio {ratio}")
            result["paper_table7"] = {"static_pf": static_pf, "grown_pf": grown_pf, "ratio": ratio}
    result["model_flops_per_token"] = F.model_flops_per_token(shape)
    result["model_flops_per_token_causal"] = F.model_flops_per_token_causal(shape)
    return texts, result
