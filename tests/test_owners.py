"""One owner per concept (issue #13): the checkpoint key format is spelled in engine/checkpoint/keys.py only.

The source is scanned with `ast`: every string constant (f-string pieces included) outside
engine/checkpoint/keys.py must be free of the key format's literals. Docstrings (string statements,
including attribute docstrings) and comments may mention the format; they are not code.
The bare weight prefix `model.` is not checked textually: config paths (`model.vocab_size`)
and transformers' own key prefix share the spelling.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grow_megatron"
OWNER = PACKAGE / "engine" / "checkpoint" / "keys.py"
# Substrings only our checkpoint keys contain (transformers' Llama names differ: self_attn,
# post_attention_layernorm, gate_proj, embed_tokens, lm_head).
KEY_LITERALS = (
    "optimizer.param",
    "optimizer.exp_avg",
    "decoder.layers",
    "decoder.final_layernorm",
    "embedding.word_embeddings",
    "self_attention.linear_",
    "mlp.linear_fc",
    "pre_mlp_layernorm",
    "output_layer.weight",
)
EXACT = ("optimizer.",)
"""Constants that are exactly a key prefix (f"optimizer.{state}.{key}" builds a key by hand)."""


def _code_strings(tree: ast.AST):
    """(line, text) of every string constant that is not a docstring."""
    docs = {
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def _offences(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    out = []
    for line, text in _code_strings(ast.parse(path.read_text(), str(path))):
        bad = [lit for lit in KEY_LITERALS if lit in text] + [lit for lit in EXACT if text == lit]
        if bad:
            out.append(f"{path.relative_to(root)}:{line}: {text!r} spells {bad[0]!r}")
    return out


def test_key_format_is_spelled_in_engine_keys_only():
    assert OWNER.is_file()
    offences = [o for path in sorted(PACKAGE.rglob("*.py")) if path != OWNER for o in _offences(path)]
    assert not offences, "use grow_megatron.engine.checkpoint.keys instead:\n" + "\n".join(offences)


def test_the_owner_spells_it_and_docstrings_do_not_count(tmp_path):
    # The scan finds the literals where they are (so it can fail), and skips documentation.
    assert _offences(OWNER)
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""Keys: optimizer.exp_avg.model.decoder.layers.x"""\n'
        'X = 1\n"""An attribute docstring: decoder.layers."""\n'
        "# a comment: optimizer.param.model.\n"
        'def f(state, key):\n    return f"optimizer.{state}.{key}"\n'
        'K = "model.decoder.layers."\n'
    )
    assert sorted(o.split(":")[1] for o in _offences(probe, tmp_path)) == ["6", "7"]


@pytest.mark.parametrize(
    "key,parsed",
    [
        ("model.embedding.word_embeddings.weight", (None, "embedding.word_embeddings.weight")),
        (
            "optimizer.exp_avg_sq.model.decoder.layers.mlp.linear_fc2.weight",
            ("exp_avg_sq", "decoder.layers.mlp.linear_fc2.weight"),
        ),
        ("optimizer.param.model.decoder.final_layernorm.weight", ("param", "decoder.final_layernorm.weight")),
        ("common.optimizer_step", None),
    ],
)
def test_key_helpers_round_trip(key, parsed):
    from grow_megatron.engine.checkpoint import keys

    assert keys.parse_state_key(key) == parsed
    if parsed is not None:
        state, name = parsed
        assert (keys.model_key(name) if state is None else keys.state_key(state, keys.model_key(name))) == key
    assert keys.stacked_name("decoder.layers.3.mlp.linear_fc1.weight") == (keys.layer_key(keys.FC1), 3)
    assert keys.stacked_name(keys.EMBED) == (keys.EMBED, None)
    with pytest.raises(ValueError):
        keys.state_key("momentum", keys.model_key(keys.EMBED))
