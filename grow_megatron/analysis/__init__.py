"""Depth analyses of (grown) Llama-shaped models (docs/method.md §7, paper Section 4 / Appendix B).

Library use (all functions take an HF `LlamaForCausalLM` wrapped in a `ResidualRunner`):

    from grow_megatron.analysis import ResidualRunner, depth_score_analysis, DepthScoreConfig, token_batches
    res = depth_score_analysis(ResidualRunner(model), token_batches(ids, 8), DepthScoreConfig())

or by name through `run_analysis(name, as_loaded(model, tokenizer), config, Inputs(...))`.
Command line: `grow-megatron analyze <analysis> MODEL... --out DIR` (see cli.py, docs/analysis.md).
"""

from grow_megatron.analysis.data import EncodedMC, TokenBatch, encode_mc, load_tasks, load_token_data, token_batches
from grow_megatron.analysis.effects import (
    DepthScoreConfig,
    EffectsConfig,
    depth_score,
    depth_score_analysis,
    effects_analysis,
)
from grow_megatron.analysis.interventions import InterventionConfig, intervention_analysis, intervention_orders
from grow_megatron.analysis.lens import (
    LensConfig,
    TunedLens,
    early_exit_accuracy,
    evaluate_lens,
    lens_logits,
    train_lens,
)
from grow_megatron.analysis.runner import ResidualRunner, Skip, reverse_order, skip_order, swap_order
from grow_megatron.analysis.similarity import SimilarityConfig, block_similarity
from grow_megatron.analysis.sublayer import SublayerConfig, sublayer_analysis
from grow_megatron.analysis.suite import CONFIGS, InputError, Inputs, run_analysis
from grow_megatron.convert.load import Loaded, as_loaded, load_model

__all__ = [
    "ResidualRunner",
    "Skip",
    "swap_order",
    "skip_order",
    "reverse_order",
    "TokenBatch",
    "EncodedMC",
    "token_batches",
    "encode_mc",
    "load_tasks",
    "load_token_data",
    "LensConfig",
    "TunedLens",
    "train_lens",
    "evaluate_lens",
    "early_exit_accuracy",
    "lens_logits",
    "DepthScoreConfig",
    "EffectsConfig",
    "depth_score",
    "depth_score_analysis",
    "effects_analysis",
    "InterventionConfig",
    "intervention_analysis",
    "intervention_orders",
    "SublayerConfig",
    "sublayer_analysis",
    "SimilarityConfig",
    "block_similarity",
    "Loaded",
    "load_model",
    "as_loaded",
    "CONFIGS",
    "Inputs",
    "InputError",
    "run_analysis",
]
