"""Rules of the repository that no single module can check for itself (issue #26):

- an EngineSpec is constructed only by `engine.resolve.engine_spec` (package, tools and tests);
- every reference to the method names a section of docs/method.md that exists, every docs/*.md
  path named exists, and nothing points at a file outside the repository (the specification
  and design notes the code was first written against are not shipped);
- the kernel switch (`grow_kernels`) is read only by model/builder.py, which makes it the layer
  spec: the model's modules get their kernel choice as a constructor argument;
- every entry of the slow tier (tests/conftest.py SLOW) names a test module or test function
  that exists, so a rename cannot move tests into the fast tier unnoticed.

Each scan is shown to find a planted violation, so it can fail.
"""

import ast
import re
from pathlib import Path

import pytest

from conftest import SLOW

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "grow_megatron" / "engine" / "resolve.py"
CODE_DIRS = ("grow_megatron", "kernels", "tools", "tests")
TEXT_GLOBS = (
    "README.md",
    "docs/**/*.md",
    "examples/*",
    "grow_megatron/**/*.py",
    "kernels/**/*.py",
    "tools/*",
    "tests/**/*.py",
    "setup.py",
    "setup.cfg",
    "ruff.toml",
    ".ci/*",
)

METHOD = ROOT / "docs" / "method.md"
METHOD_REF = re.compile(r"docs/method\.md((?:(?:,? and |, | )§\d+)+)")
DOC_PATH = re.compile(r"(?<![\w/.])docs/[\w./-]+\.md")
OUTSIDE = re.compile(
    r"SPEC\.md|\bSPEC §?\d|\bSPEC's|DESIGN\.md|\.\./shared|\bshared/(?:notes|SPEC|DESIGN|reference)"
    r"|notes/(?:h100-anchors|megatron-core-on-cpu)"
)


def _engine_spec_calls(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name == "EngineSpec":
                out.append(f"{path.relative_to(root)}:{node.lineno}")
    return out


def _outside_owner(scan, owner: Path, dirs) -> list[str]:
    """What `scan(path)` finds in the Python files under `dirs`, the owner's file aside."""
    return [o for d in dirs for path in sorted((ROOT / d).rglob("*.py")) if path != owner for o in scan(path)]


def test_engine_spec_is_constructed_only_by_engine_spec():
    assert _engine_spec_calls(OWNER), "engine/resolve.py must construct it (the scan would find nothing)"
    offences = _outside_owner(_engine_spec_calls, OWNER, CODE_DIRS)
    assert not offences, "build it with grow_megatron.engine.resolve.engine_spec instead:\n" + "\n".join(offences)


def test_the_engine_spec_scan_finds_a_planted_constructor(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""EngineSpec(model, optim, 64) in a docstring is no call."""\n'
        "from grow_megatron.engine import build\n"
        "from grow_megatron.engine.build import EngineSpec\n"
        "a = EngineSpec(None, None, 64, bf16=False, use_kernels=False)\n"
        "b = build.EngineSpec(None, None, 64, bf16=False, use_kernels=False)\n"
    )
    assert [o.split(":")[1] for o in _engine_spec_calls(probe, tmp_path)] == ["4", "5"]


def _method_sections() -> set[int]:
    return {int(m) for m in re.findall(r"^## (\d+)\. ", METHOD.read_text(), flags=re.M)}


def _text_files():
    seen = set()
    for pattern in TEXT_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path not in seen and path.suffix not in (".png", ".pdf", ".xz", ".json", ".jsonl"):
                seen.add(path)
                yield path


def _reference_offences(path: Path, text: str, sections: set[int]) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{n}"
        for refs in METHOD_REF.findall(line):
            out += [
                f"{where}: docs/method.md has no section {s}"
                for s in map(int, re.findall(r"§(\d+)", refs))
                if s not in sections
            ]
        out += [f"{where}: {p} does not exist" for p in DOC_PATH.findall(line) if not (ROOT / p).exists()]
        out += [f"{where}: {m.group(0)!r} points outside the repository" for m in OUTSIDE.finditer(line)]
    return out


def test_references_name_sections_and_files_that_exist():
    sections = _method_sections()
    assert sections == set(range(1, len(sections) + 1)) and len(sections) >= 10, sorted(sections)
    offences = [
        o
        for path in _text_files()
        if path.name != "test_repo_rules.py"
        for o in _reference_offences(path.relative_to(ROOT), path.read_text(errors="replace"), sections)
    ]
    # docs/method.md's own cross-references ("§5", "(§10)") name its sections too.
    offences += [
        f"docs/method.md: no section {s}"
        for s in map(int, re.findall(r"§(\d+)", METHOD.read_text()))
        if s not in sections
    ]
    assert not offences, "\n".join(offences)


def test_the_reference_scan_finds_planted_offences():
    text = (
        "see docs/method.md §3 and §4; docs/method.md §1, §2, §4, §9\n"  # fine
        "see docs/method.md §11\n"
        "docs/method.md §6, §42\n"
        "in docs/nowhere.md\n"
        "the formulas of SPEC 6 and ../shared/SPEC.md, DESIGN.md, shared/notes/megatron-core-on-cpu.md\n"
    )
    offences = _reference_offences(Path("probe.md"), text, set(range(1, 11)))
    assert [o.split(": ", 1)[1] for o in offences] == [
        "docs/method.md has no section 11",
        "docs/method.md has no section 42",
        "docs/nowhere.md does not exist",
        "'SPEC 6' points outside the repository",
        "'../shared' points outside the repository",
        "'SPEC.md' points outside the repository",
        "'DESIGN.md' points outside the repository",
        "'shared/notes' points outside the repository",
    ]


@pytest.mark.parametrize("entry", SLOW)
def test_slow_tier_entries_exist(entry):
    module, _, function = entry.partition("::")
    path = Path(__file__).parent / module
    assert path.is_file(), f"tests/conftest.py SLOW names {module}, which does not exist"
    if function:
        names = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert function in names, f"tests/conftest.py SLOW names {entry}: {module} has no {function}"


# The one kernel switch: GrowTransformerConfig.grow_kernels, turned into the layer spec (and the
# fused loss) by model/builder.py; modules get their choice as a constructor argument.
SWITCH_OWNER = ROOT / "grow_megatron" / "model" / "builder.py"


def _kernel_switch_reads(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr == "grow_kernels") or (
            isinstance(node, ast.Constant) and node.value == "grow_kernels"
        ):
            out.append(f"{path.relative_to(root)}:{node.lineno}")
    return out


def test_the_kernel_switch_is_read_only_by_the_model_builder():
    assert _kernel_switch_reads(SWITCH_OWNER), "model/builder.py must read it (the scan would find nothing)"
    offences = _outside_owner(_kernel_switch_reads, SWITCH_OWNER, ("grow_megatron",))
    assert not offences, "take the kernel choice from the layer spec (model/spec.py) instead:\n" + "\n".join(offences)


def test_the_kernel_switch_scan_finds_a_planted_read(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "a = config.grow_kernels\n"
        'b = getattr(config, "grow_kernels", ())\n'
        "c = config.grow_kernels_doc  # another name\n"
    )
    assert [o.split(":")[1] for o in _kernel_switch_reads(probe, tmp_path)] == ["1", "2"]
