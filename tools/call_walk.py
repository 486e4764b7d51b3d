"""The walk from a function through the package's static call graph, counted by layer
(docs/architecture.md, "The walk from train").

    python tools/call_walk.py [grow_megatron.training.loop.train] [--tree] [--config [--sections]]

From the start function, every call whose name resolves (through the module's own definitions,
its `from grow_megatron... import` names and module aliases, and a class's `Cls.method(...)`)
to a function or class of the package is followed once, depth first, in source order. The walk
is the sequence of functions in the order first visited. Printed: the packages it crosses
(grow_megatron.<pkg>), and its climbs: consecutive steps of the sequence where the next
function sits in a higher layer (.importlinter's order) than the one before, i.e. where a
reader following the run goes back up the stack before going down again; a climb right after a
leaf (a function that calls no package function on the walk: an error type, a record, a
constant's helper) is a return from a lookup, the others are where the walk itself leaves a
layer it had gone down to. Methods called on objects (`engine.foo()`) are not resolved: the
count is of what a reader can follow by name.

`--config` follows the run's configuration instead of every call: only the calls that pass an
argument which is the `RunConfig`, or an object that holds it (`ResolvedRun.cfg`), by the
classes the source's annotations state; `--sections` also follows the calls that pass one of
its sections (`cfg.data`, an `EngineSpec` holding `cfg.model`). This is issue 26's "following
cfg from train": where the whole configuration is read, and where it has been resolved into
values that lower layers receive instead.

Standard library only, so it runs on any checkout (the same script counts before and after a
change); `Tree(root)` reads another checkout (tests/test_owners.py plants a violation in one).
"""

from __future__ import annotations

import argparse
import ast
import configparser
from dataclasses import dataclass, field
from pathlib import Path

PKG = "grow_megatron"


class Module:
    def __init__(self, name: str, path: Path | None):
        self.name = name
        self.tree = ast.parse(path.read_text()) if path else ast.Module(body=[], type_ignores=[])
        self.defs = {
            n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        self.names: dict[str, str] = {}  # local name -> "module:attr" or "module:" (a module alias)


@dataclass
class Tree:
    """One checkout's package, its modules parsed on first use."""

    root: Path
    _modules: dict[str, Module] = field(default_factory=dict)
    _classes: dict[str, dict[str, str]] | None = None

    def layers(self) -> dict[str, int]:
        """Package -> its height in .importlinter's layers contract (listed top first)."""
        cp = configparser.ConfigParser()
        cp.read(self.root / ".importlinter")
        rows = [r.strip() for r in cp["importlinter:contract:layers"]["layers"].splitlines() if r.strip()]
        return {name.strip().split(".")[1]: len(rows) - i for i, row in enumerate(rows) for name in row.split("|")}

    def module_path(self, mod: str) -> Path | None:
        p = self.root / Path(*mod.split("."))
        if (p / "__init__.py").is_file():
            return p / "__init__.py"
        return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None

    def module(self, name: str) -> Module:
        if name not in self._modules:
            mod = Module(name, self.module_path(name))
            for node in ast.walk(mod.tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
                    for a in node.names:
                        sub = f"{node.module}.{a.name}"
                        is_module = self.module_path(sub) is not None
                        mod.names[a.asname or a.name] = f"{sub}:" if is_module else f"{node.module}:{a.name}"
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.startswith(PKG) and a.asname:
                            mod.names[a.asname] = f"{a.name}:"
            self._modules[name] = mod
        return self._modules[name]

    def defined(self, m: str, n: str) -> tuple[str, str] | None:
        """(module, name) where name `n` of module `m` is defined, following re-exports (a
        package's __init__ importing its API from its modules), or None."""
        seen = set()
        while (m, n) not in seen:
            seen.add((m, n))
            if n in self.module(m).defs:
                return m, n
            target = self.module(m).names.get(n)
            if not target or target.endswith(":"):
                return None
            m, n = target.split(":")
        return None

    def resolve(self, mod: Module, call: ast.expr) -> tuple[str, str] | None:
        """(module, name) of a called package function or class, or None."""
        if isinstance(call, ast.Name):
            if call.id in mod.defs:
                return mod.name, call.id
            target = mod.names.get(call.id)
            if target and not target.endswith(":"):
                return self.defined(*target.split(":"))
        if isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name):
            if isinstance(mod.defs.get(call.value.id), ast.ClassDef):
                return mod.name, call.value.id  # `_Data.build(...)`: the class, as for a constructor call
            target = mod.names.get(call.value.id)
            if target and target.endswith(":"):
                return self.defined(target[:-1], call.attr)
        return None

    def classes(self) -> dict[str, dict[str, str]]:
        """Every class of the package: its annotated fields -> the class each one names."""
        if self._classes is None:
            self._classes = {}
            for path in sorted((self.root / PKG).rglob("*.py")):
                for node in ast.parse(path.read_text()).body:
                    if isinstance(node, ast.ClassDef):
                        fields = self._classes.setdefault(node.name, {})
                        for st in node.body:
                            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                                t = _annotation_name(st.annotation)
                                if t:
                                    fields[st.target.id] = t
        return self._classes


def _callees(tree: Tree, m: str, node: ast.AST, follows=None) -> list[tuple[str, str]]:
    """The package functions `node`'s calls name, in source order; `follows(mod, body, call)`
    keeps only some calls (None: all)."""
    mod = tree.module(m)
    bodies = (
        [f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if isinstance(node, ast.ClassDef)
        else [node]
    )
    out = []
    for body in bodies:
        keep = follows(mod, body, node) if follows else None
        calls = sorted((c for c in ast.walk(body) if isinstance(c, ast.Call)), key=lambda c: (c.lineno, c.col_offset))
        for c in calls:
            r = tree.resolve(mod, c.func)
            if r is not None and (keep is None or keep(c)):
                out.append(r)
    return out


def walk(tree: Tree, start: str, leaves: set | None = None, follows=None) -> list[str]:
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
        callees = _callees(tree, m, tree.module(m).defs[n], follows)
        if not callees:
            leaves.add(key)
        for r in callees:
            visit(*r)

    visit(mod_name, fn)
    return order


def _annotation_name(ann: ast.expr | None) -> str | None:
    """The class an annotation names (`RunConfig`, `"RunConfig"`, `RunConfig | None`,
    `config.RunConfig`), or None."""
    if ann is None:
        return None
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
        try:
            return _annotation_name(ast.parse(ann.value, mode="eval").body)
        except SyntaxError:
            return None
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        return _annotation_name(ann.left) or _annotation_name(ann.right)
    if isinstance(ann, ast.Attribute):
        return ann.attr
    return ann.id if isinstance(ann, ast.Name) else None


def config_classes(tree: Tree, sections: bool) -> set[str]:
    """The classes that are or hold the run's configuration: RunConfig (with `sections`, also
    every config class reachable from its fields: ModelConfig, DataConfig, ...), and every class
    with a field of such a class (ResolvedRun's `cfg`; with `sections`, EngineSpec's `model`)."""
    classes = tree.classes()
    found, todo = set(), ["RunConfig"]
    while todo:
        c = todo.pop()
        if c in found or c not in classes:
            continue
        found.add(c)
        todo += [t for t in classes[c].values() if t.endswith("Config")] if sections else []
    while True:
        more = {c for c, fields in classes.items() if c not in found and found & set(fields.values())}
        if not more:
            return found
        found |= more


def _typed_locals(tree: Tree, mod: Module, fn: ast.AST, owner: str | None) -> dict[str, str]:
    """Names of a function whose class the source states: annotated parameters, `self` in a
    method, and names assigned from an expression of known class (an attribute of a typed name,
    a call of a package function by its return annotation, or of a class)."""
    types: dict[str, str] = {}
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        for i, a in enumerate(args):
            t = _annotation_name(a.annotation)
            if t:
                types[a.arg] = t
            elif i == 0 and owner and a.arg in ("self", "cls"):
                types[a.arg] = owner
    for _ in range(3):  # a few passes, for chains of assignments
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                pairs = []
                for tgt in node.targets:
                    if isinstance(tgt, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        pairs += list(zip(tgt.elts, node.value.elts))
                    else:
                        pairs.append((tgt, node.value))
                for tgt, val in pairs:
                    t = _expr_class(tree, val, types) or _call_class(tree, mod, val)
                    if isinstance(tgt, ast.Name) and t:
                        types[tgt.id] = t
    return types


def _expr_class(tree: Tree, e: ast.expr, types: dict[str, str]) -> str | None:
    if isinstance(e, ast.Name):
        return types.get(e.id)
    if isinstance(e, ast.Attribute):
        base = _expr_class(tree, e.value, types)
        return tree.classes().get(base, {}).get(e.attr) if base else None
    return None


def _call_class(tree: Tree, mod: Module, e: ast.expr) -> str | None:
    """The class a call of a package function (its return annotation) or class returns."""
    r = tree.resolve(mod, e.func) if isinstance(e, ast.Call) else None
    if r is None:
        return None
    node = tree.module(r[0]).defs[r[1]]
    return node.name if isinstance(node, ast.ClassDef) else _annotation_name(node.returns)


def config_walk(tree: Tree, start: str, leaves: set | None = None, sections: bool = False) -> list[str]:
    """The walk that follows the run's config: only the calls that pass the config (or, with
    `sections`, one of its sections) as an argument. Where the config is turned into resolved
    values (a spec, a path, a number), the walk stops."""
    cfg_types = config_classes(tree, sections)

    def follows(mod: Module, body: ast.AST, node: ast.AST):
        types = _typed_locals(tree, mod, body, node.name if isinstance(node, ast.ClassDef) else None)
        return lambda c: any(
            _expr_class(tree, a, types) in cfg_types for a in list(c.args) + [k.value for k in c.keywords]
        )

    return walk(tree, start, leaves, follows)


@dataclass(frozen=True)
class Count:
    packages: list[str]
    climbs: list[tuple[str, str]]
    inner: list[tuple[str, str]]
    """Climbs not right after a leaf."""


def count(tree: Tree, order: list[str], leaves: set[str]) -> Count:
    layers = tree.layers()
    climbs = [(a, b) for a, b in zip(order, order[1:]) if layers[b.split(".")[1]] > layers[a.split(".")[1]]]
    return Count(sorted({f.split(".")[1] for f in order}), climbs, [(a, b) for a, b in climbs if a not in leaves])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start", nargs="?", default=f"{PKG}.training.loop.train")
    ap.add_argument("--tree", action="store_true", help="print the walk, one function a line")
    ap.add_argument("--config", action="store_true", help="follow only the calls that pass the run's RunConfig")
    ap.add_argument(
        "--sections", action="store_true", help="with --config: also the calls that pass one of its sections"
    )
    args = ap.parse_args()
    tree = Tree(Path(__file__).resolve().parents[1])
    leaves: set[str] = set()
    order = config_walk(tree, args.start, leaves, args.sections) if args.config else walk(tree, args.start, leaves)
    c = count(tree, order, leaves)
    if args.tree:
        for f in order:
            print(f)
    print(
        f"{len(order)} functions, {len(c.packages)} packages ({', '.join(c.packages)}), "
        f"{len(c.climbs)} climbs, {len(c.inner)} of them not back from a leaf"
    )
    for a, b in c.climbs:
        print(f"  climb{'' if a in leaves else ' (not from a leaf)'}: {a} -> {b}")


if __name__ == "__main__":
    main()
