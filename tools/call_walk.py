"""The walk from a function through the package's static call graph, counted by layer
(docs/architecture.md, "The walk from train").

    python tools/call_walk.py [grow_megatron.training.loop.train] [--tree]

From the start function, every call whose name resolves (through the module's own definitions
and its `from grow_megatron... import` names and module aliases) to a function or class of
the package is followed once, depth first, in source order. The walk is the sequence of
functions in the order first visited. Printed: the packages it crosses (grow_megatron.<pkg>),
and its climbs: consecutive steps of the sequence where the next function sits in a higher
layer (.importlinter's order) than the one before, i.e. where a reader following the run goes
back up the stack before going down again; a climb right after a leaf (a function that calls
no package function: an error type, a record, a constant's helper) is a return from a lookup,
the others are where the walk itself leaves a layer it had gone down to. Methods called on objects (`engine.foo()`) are not
resolved: the count is of what a reader can follow by name. Standard library only, so it runs
on any checkout (the same script counts before and after a change).
"""

from __future__ import annotations

import argparse
import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "grow_megatron"


def _layers() -> dict[str, int]:
    cp = configparser.ConfigParser()
    cp.read(ROOT / ".importlinter")
    rows = [r.strip() for r in cp["importlinter:contract:layers"]["layers"].splitlines() if r.strip()]
    # Listed top first: the higher the number, the higher the layer.
    return {name.strip().split(".")[1]: len(rows) - i for i, row in enumerate(rows) for name in row.split("|")}


def _module_path(mod: str) -> Path | None:
    p = ROOT / Path(*mod.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


class Module:
    def __init__(self, name: str):
        self.name = name
        path = _module_path(name)
        self.tree = ast.parse(path.read_text()) if path else ast.Module(body=[], type_ignores=[])
        self.defs = {
            n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        self.names: dict[str, str] = {}  # local name -> "module:attr" or "module:" (a module alias)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    self.names[a.asname or a.name] = f"{sub}:" if _module_path(sub) else f"{node.module}:{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith(PKG) and a.asname:
                        self.names[a.asname] = f"{a.name}:"


_modules: dict[str, Module] = {}


def module(name: str) -> Module:
    if name not in _modules:
        _modules[name] = Module(name)
    return _modules[name]


def defined(m: str, n: str) -> tuple[str, str] | None:
    """(module, name) where name `n` of module `m` is defined, following re-exports (a package's
    __init__ importing its API from its modules), or None."""
    seen = set()
    while (m, n) not in seen:
        seen.add((m, n))
        if n in module(m).defs:
            return m, n
        target = module(m).names.get(n)
        if not target or target.endswith(":"):
            return None
        m, n = target.split(":")
    return None


def resolve(mod: Module, call: ast.expr) -> tuple[str, str] | None:
    """(module, name) of a called package function or class, or None."""
    if isinstance(call, ast.Name):
        if call.id in mod.defs:
            return mod.name, call.id
        target = mod.names.get(call.id)
        if target and not target.endswith(":"):
            return defined(*target.split(":"))
    if isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name):
        target = mod.names.get(call.value.id)
        if target and target.endswith(":"):
            return defined(target[:-1], call.attr)
    return None


def walk(start: str, leaves: set | None = None) -> list[str]:
    """The functions in the order first visited; `leaves` collects those that call none."""
    mod_name, fn = start.rsplit(".", 1)
    seen: set[str] = set()
    order: list[str] = []
    leaves = set() if leaves is None else leaves

    def visit(m: str, n: str) -> None:
        key = f"{m}.{n}"
        if key in seen:
            return
        seen.add(key)
        order.append(key)
        mod = module(m)
        node = mod.defs[n]
        calls = sorted((c for c in ast.walk(node) if isinstance(c, ast.Call)), key=lambda c: (c.lineno, c.col_offset))
        callees = [r for c in calls for r in [resolve(mod, c.func)] if r is not None]
        if not callees:
            leaves.add(key)
        for r in callees:
            visit(*r)

    visit(mod_name, fn)
    return order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start", nargs="?", default=f"{PKG}.training.loop.train")
    ap.add_argument("--tree", action="store_true", help="print the walk, one function a line")
    args = ap.parse_args()
    layers = _layers()
    leaves: set[str] = set()
    order = walk(args.start, leaves)
    pkgs = [f.split(".")[1] for f in order]
    climbs = [(a, b) for a, b in zip(order, order[1:]) if layers[b.split(".")[1]] > layers[a.split(".")[1]]]
    inner = [(a, b) for a, b in climbs if a not in leaves]
    if args.tree:
        for f in order:
            print(f)
    print(
        f"{len(order)} functions, {len(set(pkgs))} packages ({', '.join(sorted(set(pkgs)))}), "
        f"{len(climbs)} climbs, {len(inner)} of them not back from a leaf"
    )
    for a, b in climbs:
        print(f"  climb{'' if a in leaves else ' (not from a leaf)'}: {a} -> {b}")


if __name__ == "__main__":
    main()
