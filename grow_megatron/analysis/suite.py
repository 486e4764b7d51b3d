"""One entry point per analysis: model + inputs + config -> JSON-able result dict.

`run_analysis(name, ...)` is what the CLI and the comparison report call; each analysis'
options live in its own dataclass config (see CONFIGS). Inputs are token sequences (text
data, or the prompts of a task when no text is given) and/or multiple-choice examples.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from grow_megatron.analysis import cost
from grow_megatron.analysis.data import (
    MCBatch,
    TokenBatch,
    accuracy_se,
    encode_mc,
    load_token_data,
    mc_batches,
    token_batches,
)
from grow_megatron.analysis.effects import DepthScoreConfig, EffectsConfig, depth_score_analysis, effects_analysis
from grow_megatron.analysis.interventions import InterventionConfig, flat_interventions, intervention_analysis
from grow_megatron.analysis.lens import LensConfig, TunedLens, early_exit_accuracy, evaluate_lens, train_lens
from grow_megatron.analysis.runner import ResidualRunner, first_changed
from grow_megatron.analysis.similarity import SimilarityConfig, block_similarity
from grow_megatron.analysis.sublayer import SublayerConfig, sublayer_analysis
from grow_megatron.config.base import from_dict
from grow_megatron.convert.load import Loaded
from grow_megatron.eval.tasks import MCExample

CONFIGS: dict[str, type] = {
    "tuned-lens": LensConfig,
    "depth-score": DepthScoreConfig,
    "effects": EffectsConfig,
    "interventions": InterventionConfig,
    "sublayer": SublayerConfig,
    "block-similarity": SimilarityConfig,
}


QUICK: dict[str, dict[str, Any]] = {
    "tuned-lens": {"steps": 50, "max_sequences": 64},
    "depth-score": {"max_sequences": 16},
    "effects": {"max_sequences": 4, "parts": ["layer"]},
    "interventions": {"swap_sizes": [1, 2, 4], "skip_sizes": [1, 2], "reverse_sizes": [4]},
    "sublayer": {"max_sequences": 16},
}
"""`--quick`: settings for a first look in minutes on a CPU (with --n 50 examples per primitive
task); any option given explicitly (or with --set) wins over these."""
QUICK_N = 50


class InputError(ValueError):
    """An analysis was asked to run without the inputs it needs (data, task, tokenizer)."""


NEEDS_TOKENS = ("tuned-lens", "depth-score", "effects", "sublayer")
NEEDS_TASKS = ("interventions",)


@dataclass
class Inputs:
    """What the analyses read besides the model."""

    data_path: str | None = None
    """Text/token file for token-based analyses (see data.load_token_data)."""
    sequences: list[list[int]] | None = None
    """Token id sequences given directly (in-memory use); take precedence over data_path."""
    tasks: list[MCExample] = field(default_factory=list)
    """Multiple-choice examples for interventions and early-exit accuracy."""
    lens_path: str | None = None
    """A saved tuned lens to evaluate instead of training one."""
    add_bos: bool = False
    """Prepend BOS to multiple-choice prompts (as `grow-megatron eval --add-bos`)."""


def token_sequences(loaded: Loaded, inputs: Inputs, seq_len: int, max_sequences: int) -> list[list[int]]:
    """Token sequences for token-based analyses: given ids, else the data file, else the task prompts."""
    if inputs.sequences is not None:
        return [list(s)[:seq_len] for s in inputs.sequences][:max_sequences]
    if inputs.data_path:
        return load_token_data(inputs.data_path, loaded.tokenizer, seq_len, max_sequences)
    if inputs.tasks and loaded.tokenizer is not None:
        # The paper's depth score runs on task prompts (GSM8K); keep each prompt's last seq_len tokens.
        return [list(loaded.tokenizer(ex.prompt)["input_ids"])[-seq_len:] for ex in inputs.tasks][:max_sequences]
    raise InputError("this analysis needs token data: give --data FILE (or --tasks FILE and a model with a tokenizer)")


def _n_settings(cfg: Any, mode: str) -> int:
    return 1 if mode == "current" else len(cfg.boundary_positions or cfg.boundaries)


def estimate(
    name: str,
    runner: ResidualRunner,
    cfg: Any,
    batches: Sequence[TokenBatch] = (),
    mc: Sequence[MCBatch] = (),
    examples: int = 0,
    n_held: int = 0,
) -> cost.CostEstimate | None:
    """The cost of analysis `name` on these batches, with a timed probe (None: negligible)."""
    L, U = runner.num_layers, cost.unembed_passes(runner)
    shapes = [b.batch.ids.shape for b in mc] or [b.ids.shape for b in batches]
    if not shapes:
        return None
    tokens, nb = cost.mean_tokens(shapes), len(shapes)
    if name == "interventions":
        rest = [len(o) - first_changed(o, L) for *_, o in flat_interventions(L, cfg)]
        est = cost.interventions_cost(L, nb, tokens, rest, examples, sum(len(b.rows) for b in mc))
    elif name == "depth-score":
        est = cost.effects_cost(runner, nb, tokens, [("layer", _n_settings(cfg, "future"))], local=False)
    elif name == "effects":
        jobs = [(p, _n_settings(cfg, m)) for p in cfg.parts for m in cfg.modes]
        est = cost.effects_cost(runner, nb, tokens, jobs, cfg.local)
    elif name == "sublayer":
        est = cost.forward_cost(runner, nb, tokens, L, f"{nb} batches x {L} layers")
    elif name == "tuned-lens":
        # Per step one forward and, per layer, a lens unembedding forward + backward (~3x).
        per = (cfg.steps * (L + 3 * (L - 1) * U) + n_held * (L + L * U)) / nb
        est = cost.forward_cost(runner, nb, tokens, per, f"{cfg.steps} steps + {n_held} held-out batches")
    else:
        return None
    longest = max(range(nb), key=lambda i: shapes[i][0] * shapes[i][1])
    if mc:
        return cost.probe(
            runner, mc[longest].batch.ids, est, position_ids=mc[longest].position_ids, segments=mc[longest].segments
        )
    return cost.probe(runner, batches[longest].ids, est)


def run_analysis(
    name: str, loaded: Loaded, cfg: Any, inputs: Inputs, out_dir: str | None = None, progress: bool = True
) -> dict:
    """Run analysis `name` on one model; out_dir receives by-products (a trained lens).
    With progress, first prints the estimated cost (see cost.py) to stderr."""
    if name not in CONFIGS:
        raise ValueError(f"unknown analysis {name!r}; choose one of {', '.join(CONFIGS)}")
    cfg.validate(name)
    model = loaded.model
    runner = ResidualRunner(model)
    if name == "block-similarity":
        return block_similarity(model, cfg)
    if name in NEEDS_TASKS:
        if not inputs.tasks:
            raise InputError(f"{name} needs a multiple-choice task: give --tasks FILE.jsonl")
        if loaded.tokenizer is None:
            raise InputError(f"{name} needs the model's tokenizer to encode the task")
        enc = encode_mc(inputs.tasks, loaded.tokenizer, cfg.max_length, inputs.add_bos)
        if progress:
            _announce(
                estimate(name, runner, cfg, mc=mc_batches(enc, cfg.batch_size), examples=len(enc.answers)),
                loaded.name,
                name,
            )
        return intervention_analysis(runner, enc, cfg, progress)

    seqs = token_sequences(loaded, inputs, cfg.seq_len, cfg.max_sequences)
    if progress and name != "tuned-lens":
        _announce(estimate(name, runner, cfg, token_batches(seqs, cfg.batch_size)), loaded.name, name)
    if name == "depth-score":
        return depth_score_analysis(runner, token_batches(seqs, cfg.batch_size), cfg, progress)
    if name == "effects":
        return effects_analysis(runner, token_batches(seqs, cfg.batch_size), cfg, progress)
    if name == "sublayer":
        return sublayer_analysis(runner, token_batches(seqs, cfg.batch_size), cfg, progress)
    # tuned lens
    # eval_fraction 0 (or a single sequence): evaluate on the training sequences themselves.
    n_eval = min(int(round(len(seqs) * cfg.eval_fraction)), len(seqs) - 1)
    train, held = (seqs[:-n_eval], seqs[-n_eval:]) if n_eval > 0 else (seqs, seqs)
    if progress:
        steps = 0 if inputs.lens_path else cfg.steps
        _announce(
            estimate(
                name,
                runner,
                replace(cfg, steps=steps),
                token_batches(train, cfg.batch_size),
                n_held=len(token_batches(held, cfg.batch_size)),
            ),
            loaded.name,
            name,
        )
    res: dict = {}
    if inputs.lens_path:
        lens = TunedLens.load(inputs.lens_path, runner.device)
        want = (runner.num_layers, runner.core.config.hidden_size)
        if tuple(lens.A.shape[:2]) != want:
            raise InputError(
                f"lens {inputs.lens_path} has (layers, hidden) = {tuple(lens.A.shape[:2])}, the model {want}"
            )
        res["lens_path"] = inputs.lens_path
    else:
        lens = train_lens(runner, token_batches(train, cfg.batch_size), cfg, progress)
        if out_dir:
            path = os.path.join(out_dir, f"lens_{loaded.name.replace(os.sep, '_')}.pt")
            lens.save(path, {"model": loaded.name, "steps": cfg.steps, "train_sequences": len(train)})
            res["lens_path"] = path
    with torch.no_grad():
        res.update(evaluate_lens(runner, lens, token_batches(held, cfg.batch_size), cfg.top_k, progress))
        if inputs.tasks and loaded.tokenizer is not None:
            enc = encode_mc(inputs.tasks, loaded.tokenizer, add_bos=inputs.add_bos)
            res["early_exit"] = early_exit_accuracy(runner, lens, enc, cfg.batch_size, progress)
    res["num_layers"] = runner.num_layers
    return res


def _announce(est: cost.CostEstimate | None, label: str, name: str) -> None:
    if est is not None:
        print(est.line(label, name), file=sys.stderr, flush=True)


def summarize(name: str, res: dict) -> dict[str, float | tuple[float, float]]:
    """A few headline numbers of one result, for the comparison report's tables: a float, or
    (value, standard error) where the result has the statistics for one."""
    if name == "depth-score":
        se = res.get("depth_score_se", math.nan)
        L = res["num_layers"]
        return {
            "depth score": (res["depth_score"], se),
            "relative depth score": (res["relative_depth_score"], se / (L - 1) if L > 1 else math.nan),
        }
    if name == "tuned-lens":
        L = res["num_layers"]
        half = res["top_k_overlap"][: max(1, L // 2)]
        out: dict = {
            "mean KL": sum(res["kl"]) / L,
            f"mean top-{res['top_k']} overlap": sum(res["top_k_overlap"]) / L,
            "overlap first half": sum(half) / len(half),
        }
        if "early_exit" in res:
            ee = res["early_exit"]
            out["final accuracy"] = (ee["final_accuracy"], ee.get("final_se", math.nan))
            good = [i for i, a in enumerate(ee["relative_accuracy"]) if not math.isnan(a) and a >= 0.95]
            out["first layer >= 95% of final"] = good[0] if good else math.nan
        return out
    if name == "interventions":
        n = res["examples"]
        out = {"unmodified accuracy": (res["baseline_accuracy"], accuracy_se(res["baseline_accuracy"], n))}
        for kind, by_k in res["interventions"].items():
            for k, e in by_k.items():
                # The SE of one accuracy on n examples: the starts share the examples, so their
                # mean is about as noisy as one of them (not sqrt(starts) times less).
                m = sum(e["accuracy"]) / len(e["accuracy"])
                out[f"{kind} {k}: mean acc"] = (m, accuracy_se(m, n))
        return out
    if name == "sublayer":
        L = res["num_layers"]
        return {
            "mean attn rel": sum(res["attn_rel"]) / L,
            "mean attn cos": sum(res["attn_cos"]) / L,
            "mean mlp rel": sum(res["mlp_rel"]) / L,
            "mean mlp cos": sum(res["mlp_cos"]) / L,
        }
    if name == "block-similarity":
        s = res["similarity"]
        off = [s[i][j] for i in range(len(s)) for j in range(len(s)) if i != j]
        return {
            "max off-diagonal cosine": max(off) if off else math.nan,
            "mean off-diagonal cosine": sum(off) / len(off) if off else math.nan,
        }
    if name == "effects":
        out = {}
        for key, e in res["effects"].items():
            out[f"{key} max output effect"] = max(e["output_max"])
        return out
    return {}


def sample_info(name: str, res: dict) -> dict[str, float | str]:
    """n (what the numbers average over) and the chance level, for the report's tables."""
    if name in ("interventions",):
        return {"n": f"{res['examples']} examples", "chance": res.get("chance_accuracy", math.nan)}
    if name == "tuned-lens":
        out: dict = {"n": f"{res.get('tokens', '?')} tokens"}
        if "early_exit" in res:
            out["n"] += f", {res['early_exit']['examples']} examples"
            out["chance"] = res["early_exit"].get("chance_accuracy", math.nan)
        return out
    if name == "depth-score":
        return {"n": f"{res['examples']} sequences"}
    if name == "effects":
        return {"n": f"{res['examples']} sequences (maxima)"}
    if name == "sublayer":
        return {"n": f"{res['tokens']} tokens"}
    if name == "block-similarity":
        return {"n": f"{len(res['similarity'])} blocks"}
    return {}


def configs_for(names: Sequence[str], overrides: dict[str, dict] | None = None) -> dict[str, Any]:
    """Default configs of `names`, with per-analysis field overrides (name -> {field: value})."""
    cfgs = {n: from_dict(CONFIGS[n], (overrides or {}).get(n, {}), n) for n in names}
    for n, c in cfgs.items():
        c.validate(n)
    return cfgs
