"""Tiny random Llama models and a character tokenizer, for tests, docs figures and smoke runs.

Nothing here touches the network: the model is built from a config, the tokenizer from a
fixed character vocabulary.
"""

from __future__ import annotations

import copy
import string

import torch

from grow_megatron.analysis.plots import plot_similarity
from grow_megatron.analysis.similarity import SimilarityConfig, block_similarity
from grow_megatron.eval.tasks import MCExample
from grow_megatron.growth.operators import lidas, midas

CHARS = string.ascii_lowercase + string.digits + " =+-*?.:,;()\n_>"


def char_tokenizer():
    """A PreTrainedTokenizerFast over single characters (<s> prepended), vocab ~ 60."""
    # transformers (seconds): only for the toy model, not for importing the analyses.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for c in CHARS:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_llama(
    layers: int = 4,
    hidden: int = 32,
    vocab: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    init_std: float = 0.2,
):
    """A random fp32 LlamaForCausalLM; a large init_std makes layers matter (non-trivial effects)."""
    # transformers (seconds), as in char_tokenizer.
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        initializer_range=init_std,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def toy_tasks(n: int = 8, seed: int = 0) -> list[MCExample]:
    """Small variable-assignment style MC examples over the char vocabulary."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        vals = torch.randint(0, 10, (3,), generator=g).tolist()
        names = ["a", "b", "c"]
        q = int(torch.randint(0, 3, (1,), generator=g))
        prompt = "; ".join(f"{v}={x}" for v, x in zip(names, vals)) + f"; {names[q]}=?"
        choices = tuple(f" {d}" for d in range(4))
        ans = vals[q] % 4
        out.append(MCExample(prompt, choices, ans, "toy_assign"))
    return out


def grow_by_source_map(model, source_map):
    """A deep copy of an HF Llama whose layer j is a copy of layer source_map[j] (docs/method.md §3),
    i.e. the weights right after a growth step; optimizer state is not part of an HF model."""
    grown = copy.deepcopy(model)
    grown.model.layers = torch.nn.ModuleList([copy.deepcopy(model.model.layers[i]) for i in source_map])
    grown.config.num_hidden_layers = len(source_map)
    return grown


def example_figure(path: str = "docs/img/block_similarity_example.png") -> str:
    """The docs' example: block similarity of a random 12-layer model and of MIDAS / LIDAS
    growths 8 -> 12 (b = 4) of a random 8-layer model, right after growth."""
    small = tiny_llama(8, 32, 64, seed=1)
    cfg = SimilarityConfig(block_size=4)
    res = {
        "baseline (12 layers)": block_similarity(tiny_llama(12, 32, 64, seed=2), cfg),
        "MIDAS 8->12": block_similarity(grow_by_source_map(small, midas(8, 4).source_map), cfg),
        "LIDAS 8->12": block_similarity(grow_by_source_map(small, lidas(8, 4).source_map), cfg),
    }
    return plot_similarity(res, path)[0]
