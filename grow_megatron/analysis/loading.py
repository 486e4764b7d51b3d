"""Loading the models the analyses run on: the shared loader of grow_megatron.convert.load
(`analyze`, `eval` and `convert` check and load models through the same code). Analyses need
the Llama layout, which is that loader's default (`accept="llama"`)."""
from grow_megatron.convert.load import DTYPES, Loaded, as_loaded, check_model_dir, load_model

__all__ = ["DTYPES", "Loaded", "as_loaded", "check_model_dir", "load_model"]
