"""How an options dataclass's field appears on a command line (read by grow_megatron.cli.flags).

It lives in config, not in cli, because options dataclasses live next to the library they drive
(analysis, bench, eval...), which may not import the cli layer."""

from __future__ import annotations

import dataclasses
from typing import Any

from grow_megatron.config.base import ConfigError

_CLI_KEYS = frozenset({"positional", "flag", "metavar", "nargs", "append", "choices", "group", "type"})


def cli(**kw: Any) -> dict[str, Any]:
    """Field metadata for `dataclasses.field(metadata=cli(...))`; keys:

    positional (bool), flag ("--set" instead of "--overrides"), metavar, nargs (of a positional or a
    list; None: a list given as one value, converted by `type`), append (a list filled by repeating
    the flag), choices, group (argument group title), type (the argparse converter, when the
    parsed value is not the field's type, e.g. comma_list)."""
    unknown = set(kw) - _CLI_KEYS
    if unknown:
        raise TypeError(f"unknown cli() keys: {', '.join(sorted(unknown))}")
    return {"cli": kw}


def comma_list(text: str) -> tuple[str, ...]:
    """`a,b, c` -> ("a", "b", "c"): the converter of a list given as one comma-separated value."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def cli_meta(f: dataclasses.Field) -> dict[str, Any]:
    """The cli() metadata of a field ({} when it has none)."""
    return dict(f.metadata.get("cli", {}))


def flag_name(f: dataclasses.Field) -> str:
    """How errors and help name a field: its flag (`--batch-size`) or its positional (`MODEL`)."""
    m = cli_meta(f)
    if m.get("positional"):
        return m.get("metavar") or f.name.upper()
    return m.get("flag") or "--" + f.name.replace("_", "-")


def flag_of(obj: Any, name: str) -> str:
    """flag_name of field `name` of dataclass (instance or class) `obj`."""
    return flag_name(next(f for f in dataclasses.fields(obj) if f.name == name))


def check_positive(obj: Any, *names: str) -> None:
    """One-line ConfigError naming the flag of the first of `names` that is set and below 1."""
    for name in names:
        v = getattr(obj, name)
        if v is not None and v < 1:
            raise ConfigError(flag_of(obj, name), v, "must be a positive integer")
