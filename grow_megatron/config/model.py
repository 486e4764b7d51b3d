"""Model shape and feature switches (docs/method.md §1, §5)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from grow_megatron.config.base import ConfigError, check
from grow_megatron.config.loop import LoopConfig


def padded_vocab(vocab: int, tp: int) -> int:
    """Vocabulary the model is built with: rounded up so that every TP rank holds an equal slice
    (unchanged if TP divides it)."""
    return vocab if vocab % tp == 0 else math.ceil(vocab / (128 * tp)) * 128 * tp


FP8_RECIPES = ("off", "tensorwise", "rowwise")
"""model.fp8's values: off, or torchao's float8 training recipe of that name."""

# docs/method.md §1. `tiny` is ours: small enough to train on two CPU cores in minutes.
PRESETS: dict[str, dict] = {
    "smollm-360m": dict(
        num_layers=32,
        hidden_size=960,
        ffn_hidden_size=2560,
        num_attention_heads=15,
        num_query_groups=5,
        vocab_size=49152,
        seq_length=2048,
    ),
    "smollm-1.7b": dict(
        num_layers=24,
        hidden_size=2048,
        ffn_hidden_size=8192,
        num_attention_heads=32,
        num_query_groups=32,
        vocab_size=49152,
        seq_length=2048,
    ),
    "tiny": dict(
        num_layers=8,
        hidden_size=128,
        ffn_hidden_size=352,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=None,
        seq_length=128,
    ),
}


@dataclass
class ModelConfig:
    """A LLaMA-style decoder (RMSNorm, SwiGLU, RoPE, tied embeddings, no biases)."""

    preset: str | None = None
    """Start from a named shape (smollm-360m, smollm-1.7b, tiny); fields given here override it."""
    num_layers: int = 8
    """Final depth. With growth, training starts at growth.block_size layers and ends here."""
    hidden_size: int = 128
    """Model width d."""
    ffn_hidden_size: int = 352
    """SwiGLU inner width f."""
    num_attention_heads: int = 4
    """Query heads; must divide hidden_size."""
    num_query_groups: int | None = None
    """Key/value heads (GQA); must divide num_attention_heads. None = same as heads (MHA)."""
    vocab_size: int | None = None
    """Vocabulary size; None takes the tokenizer's."""
    seq_length: int = 128
    """Training context length."""
    rope_theta: float = 10000.0
    """RoPE base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal weight init."""
    ln_scaling: bool = False
    """LayerNorm-Scaling (docs/method.md §5): scale each pre-norm output of the layer at position l by
    1/sqrt(l)."""
    kernels: Literal["auto", "on", "off"] = "auto"
    """Fused Triton kernels: on = all of them, off = the pure-PyTorch reference path, auto = on a
    GPU each kernel timed against its reference at the run's shapes at start and on only where it
    is faster (the run's first note lists them with the times); off without a GPU."""
    compile: bool = False
    """torch.compile each transformer layer (per layer, as torchtitan does). Layers of one shape
    share their compiled code, so a growth adds layers without compiling per layer; the run's
    log counts the graphs compiled. The first steps after start and growth pay the compile."""
    fp8: Literal["off", "tensorwise", "rowwise"] = "off"
    """FP8 linear layers (torchao float8 training): tensorwise or rowwise scaling of inputs,
    weights and gradients. Needs a GPU with FP8 (compute capability >= 8.9) and
    tensor_parallel 1; weights, checkpoints and growth stay in the training precision."""
    fp8_emulate: bool = False
    """Run model.fp8's scaling and casts with the matmuls emulated in high precision, on any
    device (tests on CPU; slower than no FP8, never a speed-up)."""
    loop: LoopConfig | None = None
    """Loop-adapted training (docs/looping.md): {start, end, repeats, from_step}; empty = no loop."""

    @classmethod
    def from_preset_dict(cls, data: dict) -> dict:
        """Merge a `preset:` into the user's dict (user fields win)."""
        preset = data.get("preset")
        if preset is None:
            return data
        if preset not in PRESETS:
            raise ConfigError("model.preset", preset, f"must be one of {', '.join(PRESETS)}")
        return {**PRESETS[preset], **data}

    @classmethod
    def from_preset(cls, preset: str) -> ModelConfig:
        """The shape of `preset` (docs/method.md §1) (the vocabulary of `tiny` is left to the tokenizer)."""
        return cls(**cls.from_preset_dict({"preset": preset}))

    def with_layers(self, num_layers: int) -> ModelConfig:
        """The same model at another depth."""
        return dataclasses.replace(self, num_layers=num_layers)

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_size(self) -> int:
        """d_kv, the width of K (and of V): kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    def validate(self, path: str = "model") -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "seq_length"):
            v = getattr(self, name)
            check(v > 0, f"{path}.{name}", v, "must be a positive integer")
        check(
            self.hidden_size % self.num_attention_heads == 0,
            f"{path}.num_attention_heads",
            self.num_attention_heads,
            f"must divide hidden_size ({self.hidden_size})",
        )
        check(
            self.kv_heads > 0 and self.num_attention_heads % self.kv_heads == 0,
            f"{path}.num_query_groups",
            self.num_query_groups,
            f"must divide num_attention_heads ({self.num_attention_heads})",
        )
        check(
            self.head_dim % 2 == 0,
            f"{path}.hidden_size",
            self.hidden_size,
            "hidden_size / num_attention_heads must be even (RoPE rotates pairs)",
        )
        if self.vocab_size is not None:
            check(
                self.vocab_size > 0,
                f"{path}.vocab_size",
                self.vocab_size,
                "must be positive (or empty for the tokenizer's)",
            )
        check(self.norm_eps > 0, f"{path}.norm_eps", self.norm_eps, "must be > 0")
        check(self.init_std > 0, f"{path}.init_std", self.init_std, "must be > 0")
        check(self.rope_theta > 0, f"{path}.rope_theta", self.rope_theta, "must be > 0")
        check(self.fp8 in FP8_RECIPES, f"{path}.fp8", self.fp8, f"must be one of {', '.join(FP8_RECIPES)}")

    def num_params(self, vocab_size: int | None = None, num_layers: int | None = None) -> int:
        """Parameter count with tied embeddings (norm gains included), as transformers counts it."""
        V = vocab_size or self.vocab_size
        L = self.num_layers if num_layers is None else num_layers
        d, f, dkv = self.hidden_size, self.ffn_hidden_size, self.kv_size
        per_layer = 2 * d * d + 2 * d * dkv + 3 * d * f + 2 * d
        return L * per_layer + V * d + d
