"""grow_megatron: a megatron-core training engine that grows Transformer depth during training."""

__version__ = "0.1.0"
