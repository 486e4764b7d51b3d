from grow_megatron.compat.cpu import cpu_compat, needs_cpu_compat

__all__ = ["cpu_compat", "needs_cpu_compat"]
