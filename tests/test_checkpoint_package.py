"""engine/checkpoint/'s API (its __init__): every exported name resolves, the names imported on
first use are the ones its static imports declare, and reading checkpoints without a model
(convert, eval and analyze of a Hugging Face directory) still imports no megatron-core."""

import ast
import subprocess
import sys
from pathlib import Path

import grow_megatron.engine.checkpoint as storage

INIT = Path(storage.__file__)


def _type_checking_imports() -> dict[str, str]:
    """{name: module} of the `if TYPE_CHECKING:` imports of the package's __init__."""
    tree = ast.parse(INIT.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                out.update({a.name: imp.module.rsplit(".", 1)[1] for a in imp.names})
    return out


def test_every_exported_name_resolves_to_its_module():
    on_first_use = {name: module for module, names in storage._ON_FIRST_USE.items() for name in names}
    assert on_first_use == _type_checking_imports()
    for name in storage.__all__:
        value = getattr(storage, name)
        if name in on_first_use:
            assert value is getattr(sys.modules[f"{storage.__name__}.{on_first_use[name]}"], name)
    assert set(on_first_use) <= set(storage.__all__)
    try:
        storage.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_readers_without_a_model_import_no_megatron():
    code = (
        "import sys\n"
        "import grow_megatron.engine.checkpoint, grow_megatron.convert.native, grow_megatron.cli.eval\n"
        "from grow_megatron.engine.checkpoint import keys, latest_checkpoint, verify_checkpoint\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'megatron')\n"
        "assert not loaded, loaded\n"
        "from grow_megatron.engine.checkpoint import read_meta\n"
        "assert 'megatron.core' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_every_import_of_the_package_names_its_api_or_a_module():
    # A name missing from the API fails only where the import runs (often inside a function):
    # check every `from grow_megatron.engine.checkpoint import ...` of the repository here.
    root = INIT.parents[3]
    modules = {p.stem for p in INIT.parent.glob("*.py")} - {"__init__"}
    offences = []
    for folder in ("grow_megatron", "tests", "tools"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == storage.__name__:
                    offences += [
                        f"{path.relative_to(root)}:{node.lineno}: {a.name}"
                        for a in node.names
                        if a.name not in storage.__all__ and a.name not in modules
                    ]
    assert not offences, "not in engine/checkpoint's API (__all__):\n" + "\n".join(offences)
