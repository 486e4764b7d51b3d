"""The dispatcher silences megatron's known warnings by exact message, category and module, and
only while a command runs."""

import warnings

from grow_megatron.cli import known_warnings_quiet

TE = "Transformer Engine and Apex are not installed. Falling back to Torch optimizers."


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with known_warnings_quiet():
            warnings.warn_explicit(message, category, "x.py", 1, module=module, registry={})
    return bool(caught)


def test_only_the_known_warnings_are_silenced():
    assert not _shown(TE, UserWarning, "megatron.core.optimizer")
    assert not _shown("Apex is not installed. Falling back to Torch Norm", UserWarning, "megatron.core.models.backends")
    # The same words from another module, in another category, or another message of megatron's: shown.
    assert _shown(TE, UserWarning, "grow_megatron.training.loop")
    assert _shown(TE, DeprecationWarning, "megatron.core.optimizer")
    assert _shown("Transformer Engine is slow today", UserWarning, "megatron.core.optimizer")
    assert _shown("something is deprecated", FutureWarning, "megatron.core.transformer.transformer_config")


def test_the_callers_filters_come_back():
    before = list(warnings.filters)
    with known_warnings_quiet():
        assert len(warnings.filters) > len(before)
    assert warnings.filters == before
