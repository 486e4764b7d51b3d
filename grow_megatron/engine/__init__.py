"""The engine: megatron objects (model chunks, DDP, distributed optimizer), their optimizer
state, the checkpoint format and its reader (the only code that knows checkpoint keys), and the
in-memory and offline growth executors. Imports config, growth, model, data; never training."""
