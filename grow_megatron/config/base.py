"""Shared machinery for the dataclass configs: YAML-dict -> dataclass mapping and errors.

Every component config is a plain dataclass whose fields carry attribute docstrings (the
string literal right below a field). `from_dict` maps a (YAML) dict onto one, checking names
and types, and each config's `validate()` checks values. Everything wrong with a config is
reported as a `ConfigError` naming the field path, the bad value and what is allowed, so the
CLI can print one line instead of a traceback.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import os
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class UserError(Exception):
    """A failure phrased for the user: what (a field, a file), its value, the way out. The CLI
    prints it as one line without a traceback. The subclasses say what failed, so a caller can
    tell a bad config from a fault of the data, a checkpoint or the machine; `except ConfigError`
    still means "the configuration is wrong" only."""

    def __init__(self, path: str, value: Any, allowed: str):
        self.path, self.value, self.allowed = path, value, allowed
        super().__init__(f"{path} = {value!r}: {allowed}")

    def __reduce__(self):
        # Rebuilt from its three parts (a broadcast to other ranks, a forked writer's result).
        return type(self), (self.path, self.value, self.allowed)


class ConfigError(UserError, ValueError):
    """A bad configuration value (a field, a flag, a config file): the user changes the config."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as it is (an unreadable or empty corpus file, an indexed
    dataset that is corrupted or was tokenized with another tokenizer, a tokenizer file that is
    not one): the user fixes or re-prepares the data."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used (truncated, corrupted, edited, not a checkpoint): the
    user restores it or picks an earlier one."""


class RunEnvironmentError(UserError, RuntimeError):
    """The machine or the environment cannot run it as it is (a full disk, a run directory held
    by another trainer, a missing optional package): the user changes the environment."""


def check(cond: bool, path: str, value: Any, allowed: str) -> None:
    """Raise ConfigError(path, value, allowed) unless `cond` holds."""
    if not cond:
        raise ConfigError(path, value, allowed)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            # YAML 1.1 reads a bare on/off as true/false.
            value = "on" if value else "off"
        check(value in choices, path, value, f"must be one of {', '.join(map(repr, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            check(type(None) in args, path, value, "may not be empty")
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as err:
                errors.append(err.allowed)
        raise ConfigError(path, value, " or ".join(errors))
    if dataclasses.is_dataclass(tp):
        if value is None:
            # A section header whose fields are all commented out (`train:`) means the defaults.
            return from_dict(tp, {}, path)
        check(isinstance(value, dict), path, value, f"must be a mapping of {tp.__name__} fields")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        check(isinstance(value, (list, tuple)), path, value, "must be a list")
        (item_tp, *rest) = get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        check(isinstance(value, dict), path, value, "must be a mapping")
        return dict(value)
    if tp is bool:
        check(isinstance(value, bool), path, value, "must be true or false")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), path, value, "must be an integer")
        return value
    if tp is float:
        # YAML reads 3e-3 as a string (YAML 1.1); accept numeric strings for floats.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(path, value, "must be a number") from None
        check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, "must be a number")
        # YAML reads .inf/.nan as floats; no field means anything by them, and nan slips
        # through every later `x > 0` style range check.
        check(math.isfinite(value), path, value, "must be a finite number")
        return float(value)
    if tp is str:
        check(isinstance(value, str), path, value, "must be a string")
        return value
    return value


def check_output_dir(path: str, field: str) -> None:
    """Raise ConfigError unless directory `path` exists or can be created and is writable.

    Commands call it before their long work, so that a typo in an output path costs seconds, not
    the conversion or evaluation it would otherwise throw away. Nothing is created here."""
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(field, path, "is an existing file, not a directory: choose a directory path")
    probe = full
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(field, path, f"cannot be created: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(field, path, f"cannot be written: {probe} is not writable (choose another directory)")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from `data`, recursively; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in names:
            near = _near(str(key), names)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ConfigError(sub, value, f"unknown field of {cls.__name__}{hint}; known: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, sub)
    return cls(**kwargs)


def _near(key: str, names: set[str]) -> list[str]:
    """Field names the user probably meant: typos (`trian`, `stpes`) and abbreviations (`lr_min`)."""
    if not key:
        return []
    near = set(difflib.get_close_matches(key, names, n=3, cutoff=0.6))
    if len(key) >= 3:
        near |= {n for n in names if n.startswith(key[:3])}
    return sorted(near)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict (YAML/JSON-serialisable) form of a dataclass config."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass's fields (the string under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                ):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
