"""A command's flags from its options dataclass, and the parsed flags back into that dataclass.

Each field becomes one flag, `--field-name`, with the field's attribute docstring as its help
(and its default, unless the docstring speaks of it):

- `int`, `float`, `str` (and `Optional[...]` of them, default None): a typed value;
- `Literal[...]`: `choices`;
- `bool`: `--x` (store_true) when the default is False, `--x/--no-x` when it is True or None;
- `list[X]` / `tuple[X, ...]`: `nargs="+"` of X, or one X per repetition with `cli(append=True)`;
- a field without a default: a required flag (or a required positional).

What the annotation cannot say (a positional argument, a metavar, a flag spelled differently from
its field, choices computed at import time, an argument group, a comma list given as one value)
goes into the field's metadata with `cli(...)` (grow_megatron.config.options, so that options
dataclasses can live in the layers below cli). Parsed values go back through
`config.base.from_dict` and the dataclass's `validate()`, so a bad value is a one-line
ConfigError that names the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from grow_megatron.config.base import ConfigError, field_docs, from_dict
from grow_megatron.config.options import cli, cli_meta, flag_name

__all__ = ["add_flags", "cli", "command_parser", "flag_name", "given", "options_from_args"]

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def command_parser(prog: str, description: str, cls: type) -> argparse.ArgumentParser:
    """The parser of a command whose flags are the fields of dataclass `cls`; `description` (the
    command module's docstring) is shown as written, so its example command lines keep their layout."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_flags(p, cls)
    return p


def add_flags(parser: argparse.ArgumentParser, cls: type, *, only_given: bool = False) -> None:
    """Add one argument per field of dataclass `cls` to `parser`.

    only_given: every flag defaults to None (so `options_from_args` sees only what the user gave,
    to lay it over presets); lists then take `nargs="*"`, so that an empty list can be given."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        m = cli_meta(f)
        target = parser
        if m.get("group"):
            target = groups.get(m["group"]) or groups.setdefault(m["group"], parser.add_argument_group(m["group"]))
        default = _default(f)
        kw = _kwargs(_unwrap_optional(hints[f.name]), m, None if only_given else default, only_given)
        kw["help"] = _help(docs.get(f.name), default, always=only_given)
        if m.get("positional"):
            if default is not dataclasses.MISSING:
                kw.setdefault("nargs", "?")
            target.add_argument(f.name, **kw)
        else:
            target.add_argument(flag_name(f), dest=f.name, **kw)


def _kwargs(tp: Any, m: dict[str, Any], default: Any, only_given: bool) -> dict[str, Any]:
    """add_argument's keywords (but help) for a field of type `tp` (Optional removed), metadata `m`."""
    kw: dict[str, Any] = {k: m[k] for k in ("metavar", "choices") if k in m}
    if default is dataclasses.MISSING:
        if not m.get("positional"):
            kw["required"] = True
    else:
        kw["default"] = default
    origin = get_origin(tp)
    if tp is bool:
        # A flag that is off by default is switched on; one that is on (or unset: None) has both forms.
        kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        return kw
    if origin in (list, tuple):
        item = _unwrap_optional((get_args(tp) or (str,))[0])
        if m.get("append"):
            kw["action"] = "append"
        elif m.get("nargs", "+") is not None:
            kw["nargs"] = m.get("nargs", "*" if only_given else "+")
    else:
        item = tp
        if m.get("nargs") is not None:
            kw["nargs"] = m["nargs"]
    if get_origin(item) is Literal:
        kw.setdefault("choices", get_args(item))
        kw["type"] = m.get("type", type(get_args(item)[0]))
    else:
        kw["type"] = m.get("type", _converter(item))
    return kw


def _help(doc: str | None, default: Any, always: bool) -> str | None:
    """The field's docstring, with its default where the docstring does not give it."""
    if doc is None:
        return None
    shown = default not in (None, False, dataclasses.MISSING) and not (
        isinstance(default, (list, tuple)) and not default
    )
    if always or (shown and "default" not in doc):
        text = (",".join(map(str, default)) or "none") if isinstance(default, (list, tuple)) else default
        doc = f"{doc} (default: {text})"
    return doc.replace("%", "%%")  # argparse formats help with %


def _converter(tp: Any) -> Any:
    # Anything argparse cannot build from one string (a nested type) arrives as str and is
    # checked by from_dict.
    return tp if tp in (int, float, str) else str


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` the user gave (not None) in `args` (of a parser built with only_given)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.init and getattr(args, f.name, None) is not None
    }


def options_from_args(cls: type[T], args: argparse.Namespace | dict[str, Any], path: str | None = None) -> T:
    """The dataclass `cls` from parsed `args` (a Namespace or a dict of field values), checked by
    from_dict and by `cls.validate()` if it has one.

    A ConfigError names the flag, unless `path` is given: then fields are named `path.field`, as in
    a config file (the analyses' options, which are also set with `--set analysis.field=...`)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in fields}
    if path is not None:
        obj = from_dict(cls, data, path)
        if hasattr(obj, "validate"):
            obj.validate(path)
        return obj
    try:
        obj = from_dict(cls, data)
    except ConfigError as err:
        name, _, rest = err.path.partition("[")
        where = flag_name(fields[name]) + (f"[{rest}" if rest else "") if name in fields else err.path
        raise ConfigError(where, err.value, err.allowed) from None
    if hasattr(obj, "validate"):
        obj.validate()
    return obj
